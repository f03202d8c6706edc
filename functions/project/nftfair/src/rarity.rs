//! Trait rarity of a collection, scored the way rarity tools commonly do: each trait of a
//! token adds `1 / share`, where `share` is the fraction of the collection's valid tokens that
//! have that trait type with that value. Traits a token lacks add nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metadata::TokenMetadata;

/// trait_type -> value -> number of tokens with it.
pub type TraitTable = BTreeMap<String, BTreeMap<String, u64>>;

/// A token's place in the collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedToken {
    /// 1 for the rarest.
    pub rank: usize,
    /// The token id.
    pub token_id: u64,
    /// Its name.
    pub name: String,
    /// Its rarity score, rounded to 4 decimals.
    pub score: f64,
}

/// Counts every (trait_type, value) over the tokens.
pub fn trait_table(tokens: &[(u64, TokenMetadata)]) -> TraitTable {
    let mut table = TraitTable::new();
    for (_, meta) in tokens {
        for (trait_type, value) in &meta.traits {
            *table.entry(trait_type.clone()).or_default().entry(value.clone()).or_default() += 1;
        }
    }
    table
}

/// The `limit` rarest tokens: highest score first, ties by lower token id.
pub fn rank(tokens: &[(u64, TokenMetadata)], table: &TraitTable, limit: usize) -> Vec<RankedToken> {
    let total = tokens.len() as f64;
    let mut scored: Vec<(u64, &str, f64)> = tokens
        .iter()
        .map(|(id, meta)| {
            let score: f64 = meta
                .traits
                .iter()
                .filter_map(|(t, v)| table.get(t).and_then(|values| values.get(v)))
                .map(|count| total / *count as f64)
                .sum();
            (*id, meta.name.as_str(), score)
        })
        .collect();
    scored.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    scored
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, (token_id, name, score))| RankedToken {
            rank: i + 1,
            token_id,
            name: name.to_owned(),
            score: (score * 10_000.0).round() / 10_000.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, traits: &[(&str, &str)]) -> TokenMetadata {
        TokenMetadata {
            name: name.to_owned(),
            traits: traits.iter().map(|(t, v)| ((*t).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn scores_sum_inverse_shares() {
        let tokens = vec![
            (0, token("a", &[("Hat", "Cap"), ("Eyes", "Blue")])),
            (1, token("b", &[("Hat", "Cap"), ("Eyes", "Blue")])),
            (2, token("c", &[("Hat", "Cap"), ("Eyes", "Laser")])),
            (3, token("d", &[("Hat", "Crown")])),
        ];
        let table = trait_table(&tokens);
        assert_eq!(table["Hat"], BTreeMap::from([("Cap".to_owned(), 3), ("Crown".to_owned(), 1)]));
        assert_eq!(table["Eyes"], BTreeMap::from([("Blue".to_owned(), 2), ("Laser".to_owned(), 1)]));
        let ranked = rank(&tokens, &table, 10);
        let scores: Vec<(u64, f64)> = ranked.iter().map(|r| (r.token_id, r.score)).collect();
        // c: 4/3 + 4/1; d: 4/1; a and b: 4/3 + 4/2, tied, lower id first.
        assert_eq!(scores, [(2, 5.3333), (3, 4.0), (0, 3.3333), (1, 3.3333)]);
        assert_eq!(ranked.iter().map(|r| r.rank).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(rank(&tokens, &table, 2).len(), 2);
    }

    #[test]
    fn no_tokens_no_ranks() {
        assert!(rank(&[], &TraitTable::new(), 10).is_empty());
        let plain = vec![(0, token("a", &[]))];
        assert_eq!(rank(&plain, &trait_table(&plain), 10)[0].score, 0.0);
    }
}

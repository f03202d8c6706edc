//! The dashboard's charts: tasks per minute by final state, and duration percentiles per task
//! name, over the last hour. The numbers come from the store's state index (no scan); the
//! pictures are SVG drawn by plotters.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Duration, Utc};
use plotters::prelude::*;
use serde_json::{Value, json};
use taskbeat::TaskState;
use taskbeat::record::iso;
use taskbeat::store::{ListCursor, ListFilter, StateStore, StoreError, list_tasks};

/// Minutes the charts cover.
pub const WINDOW_MINUTES: i64 = 60;
/// Tasks looked at per final state: beyond that the charts say they are a sample.
const RECORD_LIMIT: usize = 5_000;
/// Records read per query.
const PAGE: usize = 1_000;
/// States a task ends in, and their colours (as on the pages).
const FINAL_STATES: [(TaskState, RGBColor); 3] = [
    (TaskState::Success, RGBColor(46, 160, 67)),
    (TaskState::Failure, RGBColor(207, 34, 46)),
    (TaskState::Revoked, RGBColor(130, 80, 223)),
];
const WIDTH: u32 = 960;
const HEIGHT: u32 = 340;

/// Duration percentiles of one task name.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDurations {
    pub task: String,
    pub count: usize,
    pub p50_ms: i64,
    pub p90_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

/// What the charts show.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartData {
    /// The end of the window.
    pub now: DateTime<Utc>,
    /// Per final state, tasks finished in each minute of the window, oldest minute first.
    pub per_minute: Vec<(TaskState, Vec<u32>)>,
    /// Per task name (finished SUCCESS or FAILURE in the window, with a start time).
    pub durations: Vec<TaskDurations>,
    /// Whether a state had more tasks than were read (the charts are then a sample).
    pub truncated: bool,
}

/// The value at or above `q` of the sorted values (nearest rank).
fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reads the tasks that finished in the last hour and counts them.
pub async fn collect(store: &dyn StateStore, now: DateTime<Utc>) -> Result<ChartData, StoreError> {
    let start = now - Duration::minutes(WINDOW_MINUTES);
    // The index sorts by creation: a task finished within the hour was created before its end,
    // and any task running longer than a Lambda's 15 minutes is rare; look two hours back.
    let since = now - Duration::minutes(2 * WINDOW_MINUTES);
    let mut per_minute = Vec::new();
    let mut samples: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut truncated = false;
    for (state, _) in FINAL_STATES {
        let filter = ListFilter { state: Some(state), task: None, since: Some(since) };
        let mut counts = vec![0u32; WINDOW_MINUTES as usize];
        let mut cursor: Option<ListCursor> = None;
        let mut read = 0;
        loop {
            let page = list_tasks(store, &filter, cursor.as_ref(), PAGE).await?;
            read += page.records.len();
            for record in &page.records {
                let Some(finished) = record.finished_at.filter(|f| *f >= start && *f <= now) else { continue };
                let minute = (finished - start).num_minutes().clamp(0, WINDOW_MINUTES - 1) as usize;
                counts[minute] += 1;
                if let (Some(started), TaskState::Success | TaskState::Failure) = (record.started_at, state) {
                    samples
                        .entry(record.task.clone())
                        .or_default()
                        .push((finished - started).num_milliseconds().max(0));
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
            if read >= RECORD_LIMIT {
                truncated = true;
                break;
            }
        }
        per_minute.push((state, counts));
    }
    let durations = samples
        .into_iter()
        .map(|(task, mut ms)| {
            ms.sort_unstable();
            TaskDurations {
                count: ms.len(),
                p50_ms: percentile(&ms, 0.50),
                p90_ms: percentile(&ms, 0.90),
                p99_ms: percentile(&ms, 0.99),
                max_ms: ms.last().copied().unwrap_or_default(),
                task,
            }
        })
        .collect();
    Ok(ChartData { now, per_minute, durations, truncated })
}

impl ChartData {
    /// The numbers behind the charts, for the page's tables.
    pub fn json(&self) -> Value {
        json!({
            "window_minutes": WINDOW_MINUTES,
            "until": iso(self.now),
            "truncated": self.truncated,
            "per_minute": self.per_minute.iter().map(|(state, counts)| json!({
                "state": state,
                "total": counts.iter().sum::<u32>(),
                "counts": counts,
            })).collect::<Vec<_>>(),
            "durations": self.durations.iter().map(|d| json!({
                "task": d.task,
                "count": d.count,
                "p50_ms": d.p50_ms,
                "p90_ms": d.p90_ms,
                "p99_ms": d.p99_ms,
                "max_ms": d.max_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

fn drawing_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e:?}")
}

/// The series' labels in a box.
fn draw_legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, position: SeriesLabelPosition) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(drawing_error)
}

/// Tasks per minute by final state: one line per state, minutes ago on the x axis.
pub fn throughput_svg(data: &ChartData) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let peak = data.per_minute.iter().flat_map(|(_, c)| c.iter().copied()).max().unwrap_or(0);
        let top = (peak + peak / 10).max(4);
        let mut chart = ChartBuilder::on(&root)
            .caption("Tasks per minute by final state, last hour", ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(-(WINDOW_MINUTES as i32)..0i32, 0u32..top)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .x_desc("minutes ago")
            .y_desc("tasks / minute")
            .x_label_formatter(&|m| format!("{}", -m))
            .label_style(("sans-serif", 13))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(drawing_error)?;
        for (state, counts) in &data.per_minute {
            let colour = FINAL_STATES.iter().find(|(s, _)| s == state).map_or(BLACK, |(_, c)| *c);
            let first = -(WINDOW_MINUTES as i32);
            let points = counts.iter().enumerate().map(|(i, n)| (first + i as i32 + 1, *n));
            let total: u32 = counts.iter().sum();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(drawing_error)?
                .label(format!("{state} ({total})"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3)));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// `text`, cut to `max` characters with an ellipsis.
fn fit(text: &str, max: usize) -> String {
    match text.chars().count() > max {
        true => format!("{}…", text.chars().take(max.saturating_sub(1)).collect::<String>()),
        false => text.to_owned(),
    }
}

/// The last part of a dotted task name, which is what fits under a bar.
fn short_name(task: &str) -> &str {
    task.rsplit('.').next().unwrap_or(task)
}

/// Duration percentiles per task name: three bars (p50, p90, p99) per name.
pub fn durations_svg(data: &ChartData) -> Result<String> {
    const BARS: [(&str, RGBColor); 3] =
        [("p50", RGBColor(84, 174, 255)), ("p90", RGBColor(9, 105, 218)), ("p99", RGBColor(10, 48, 105))];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        // Task i's bars are centred on x = i; its name, cut to fit its slot, is the label there
        // (the table under the chart has the names whole).
        let slots = data.durations.len().max(1);
        let fits = ((f64::from(WIDTH - 90) / slots as f64) / 7.5) as usize;
        let names: Vec<String> = data.durations.iter().map(|d| fit(short_name(&d.task), fits.max(4))).collect();
        let peak = data.durations.iter().map(|d| d.p99_ms).max().unwrap_or(0) as f64 / 1000.0;
        let top = if peak > 0.0 { peak * 1.4 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption("Task duration percentiles (seconds), last hour", ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..slots as f64 - 0.5, 0f64..top)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .label_style(("sans-serif", 13))
            .x_labels(slots + 1)
            .x_label_formatter(&|x| {
                let nearest = x.round();
                match (nearest - x).abs() < 1e-6 && nearest >= 0.0 {
                    true => names.get(nearest as usize).cloned().unwrap_or_default(),
                    false => String::new(),
                }
            })
            .y_desc("seconds")
            .draw()
            .map_err(drawing_error)?;
        if data.durations.is_empty() {
            root.draw(&Text::new(
                "no task finished in the last hour",
                (WIDTH as i32 / 2 - 130, HEIGHT as i32 / 2),
                ("sans-serif", 16),
            ))
            .map_err(drawing_error)?;
        }
        for (k, (label, colour)) in BARS.iter().enumerate() {
            let bars = data.durations.iter().enumerate().map(|(i, d)| {
                let value = [d.p50_ms, d.p90_ms, d.p99_ms][k] as f64 / 1000.0;
                let left = i as f64 - 0.4 + 0.27 * k as f64;
                Rectangle::new([(left, 0.0), (left + 0.25, value)], colour.filled())
            });
            chart
                .draw_series(bars)
                .map_err(drawing_error)?
                .label(*label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50);
        assert_eq!(percentile(&values, 0.90), 90);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn charts_draw_with_and_without_data() {
        let now = Utc::now();
        let empty = ChartData {
            now,
            per_minute: FINAL_STATES.iter().map(|(s, _)| (*s, vec![0; 60])).collect(),
            durations: vec![],
            truncated: false,
        };
        for svg in [throughput_svg(&empty).unwrap(), durations_svg(&empty).unwrap()] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        }
        let mut busy = empty.clone();
        busy.per_minute[0].1[59] = 12;
        busy.durations.push(TaskDurations {
            task: "app.schedules.user_task.process_users".into(),
            count: 3,
            p50_ms: 1200,
            p90_ms: 2500,
            p99_ms: 4000,
            max_ms: 4000,
        });
        let throughput = throughput_svg(&busy).unwrap();
        assert!(throughput.contains("SUCCESS (12)"), "legend names the state and its total");
        let durations = durations_svg(&busy).unwrap();
        assert!(durations.contains("process_users"), "bars are labelled with the task's short name");
    }
}

#!/usr/bin/env python3
"""Deploys infra/template.yaml to the local AWS emulator (moto server) and checks that what
CloudFormation created is what the template says.

    TASKBEAT_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT python infra/emulator_check.py [TEMPLATE]

Runs with the Python of a venv holding aws-sam-translator, boto3 and PyYAML (scripts/test
makes one). The SAM template is translated to plain CloudFormation offline (moto silently
skips AWS::Serverless::* resources), the functions' CodeUri is replaced by a stand-in zip on
the emulator's S3 (what `sam package` does with the real build), then the stack is created and
its queues, redrives, table, indexes, rules, targets, functions and event source mappings are
compared with the template. What moto does not model is listed at the end as left to
cfn-lint and checkov. Exits non-zero on the first mismatch, naming it.
"""

import ast
import io
import json
import os
import fnmatch
import string
import sys
import tomllib
import urllib.parse
import uuid
import zipfile

import boto3
import yaml
from samtranslator.translator.transform import transform

STACK = "taskbeat-emulator-check"
BUCKET = "taskbeat-emulator-check-artifacts"
CODE_KEY = "functions/bootstrap.zip"

failures = []


def check(condition, what):
    if condition:
        print(f"  ok    {what}")
    else:
        print(f"  FAIL  {what}")
        failures.append(what)


class OfflinePolicyLoader:
    """samtranslator asks for managed policy ARNs; answer without calling IAM."""

    def load(self):
        names = ["AWSLambdaBasicExecutionRole", "AWSLambdaSQSQueueExecutionRole", "AWSXrayWriteOnlyAccess"]
        return {name: f"arn:aws:iam::aws:policy/service-role/{name}" for name in names}


def resources_of(template, kind):
    return {rid: r for rid, r in template["Resources"].items() if r["Type"] == kind}


def parameter_values(template):
    """A value for every parameter without a default, and for every other optional setting
    (empty default), so both sides of their conditions are deployed."""
    values = {}
    optional = sorted(n for n, spec in template.get("Parameters", {}).items() if spec.get("Default") == "")
    for name, spec in template.get("Parameters", {}).items():
        if "Default" not in spec:
            values[name] = f"https://{name.lower()}.example.invalid"
    for name in optional[::2]:
        values[name] = "7"
    return values


def substitute(input_template, values):
    """EventBridge's input transformer for quoted placeholders (all this template uses)."""
    out = input_template
    for name, value in values.items():
        out = out.replace(f"<{name}>", value)
    return out


def main():
    endpoint = os.environ.get("TASKBEAT_TEST_AWS_ENDPOINT")
    if not endpoint:
        sys.exit("set TASKBEAT_TEST_AWS_ENDPOINT to the emulator's URL (scripts/test does)")
    # samtranslator and boto3 need a region; the emulator takes any credentials.
    region = os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "template.yaml")
    manifest_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "taskbeat.toml")
    with open(path, encoding="utf-8") as f:
        sam = yaml.safe_load(f)
    with open(manifest_path, "rb") as f:
        manifest = tomllib.load(f)

    def client(service):
        return boto3.client(service, endpoint_url=endpoint, region_name=region)

    s3, cfn = client("s3"), client("cloudformation")
    sqs, ddb, events, lam, iam = client("sqs"), client("dynamodb"), client("events"), client("lambda"), client("iam")

    print(f"==> translating {path} to CloudFormation (offline)")
    for function in resources_of(sam, "AWS::Serverless::Function").values():
        function["Properties"]["CodeUri"] = f"s3://{BUCKET}/{CODE_KEY}"
    plain = transform(sam, {}, OfflinePolicyLoader())
    leftover = sorted({r["Type"] for r in plain["Resources"].values() if r["Type"].startswith("AWS::Serverless::")})
    check(not leftover, f"no AWS::Serverless resource left after translation {leftover or ''}")

    print(f"==> creating stack {STACK} on {endpoint}")
    existing = [s for s in cfn.list_stacks()["StackSummaries"] if s["StackName"] == STACK and s["StackStatus"] != "DELETE_COMPLETE"]
    if existing:
        cfn.delete_stack(StackName=STACK)
    s3.create_bucket(Bucket=BUCKET)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n# stand-in: the emulator stores functions but never runs them\n")
    s3.put_object(Bucket=BUCKET, Key=CODE_KEY, Body=archive.getvalue())
    parameters = parameter_values(sam)
    cfn.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(plain),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    check(stack["StackStatus"] == "CREATE_COMPLETE", f"stack created ({stack['StackStatus']})")
    if failures:
        for event in cfn.describe_stack_events(StackName=STACK)["StackEvents"]:
            if "FAILED" in event["ResourceStatus"]:
                print(f"        {event['LogicalResourceId']}: {event.get('ResourceStatusReason', '')}")
        cfn.delete_stack(StackName=STACK)
        return 1
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    try:
        check_queues(sam, sqs, outputs)
        check_table(sam, ddb, outputs)
        check_rules(sam, events, sqs)
        check_functions(sam, plain, lam, iam, sqs, parameters)
        check_manifest(manifest, sqs, ddb, events, lam)
    finally:
        cfn.delete_stack(StackName=STACK)

    print("==> left to cfn-lint and checkov (moto does not model them):")
    print("  - AWS::SQS::QueuePolicy: moto skips it, so which rules may send to a queue is not checked here")
    print("  - TimeToLiveSpecification on the table: moto's CloudFormation ignores it")
    print("  - the functions themselves: moto stores them but cannot run them (no container runtime)")
    print("  - the input transformer: moto's is unreliable; the Rust tests fire it as EventBridge does")
    print("  - Secrets Manager references: moto keeps {{resolve:...}} as text instead of resolving it")
    print("  - Architectures: moto's CloudFormation drops it (checked in the translated template)")
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for what in failures:
            print(f"  - {what}")
        return 1
    print("\nemulator deploy: all checks passed")
    return 0


# The manifest's defaults, as shared/src/manifest.rs has them.
MODULE_DEFAULTS = {"batch_size": 10, "batching_window": 0, "timeout": 60, "memory": 256, "max_concurrency": 4}
MAX_RECEIVE_DEFAULT = 10


def sqs_queue_name(manifest, project, queue):
    """`{project}-{queue}`, or for a queue serving a Celery queue the name kombu's SQS transport
    looks up: `queue_name_prefix + celery_queue` with `.` as `-` and other ASCII punctuation but
    `-` and `_` as `_`, a final `.fifo` kept (kombu's Channel.entity_name)."""
    settings = manifest.get("queues", {}).get(queue, {})
    if "celery_queue" not in settings:
        return f"{project}-{queue}"
    name = settings.get("celery_queue_name_prefix", "") + settings["celery_queue"]
    suffix = ".fifo" if name.endswith(".fifo") else ""
    table = {ord(c): "_" for c in string.punctuation if c not in "-_."}
    table[ord(".")] = "-"
    return name[: len(name) - len(suffix)].translate(table) + suffix


def check_manifest(manifest, sqs, ddb, events, lam):
    """What taskbeat.toml says, read independently of the template."""
    print("==> the deployed stack against taskbeat.toml")
    project = manifest["project"]["name"]
    table = manifest["project"].get("table") or f"{project}-tasks"
    check(ddb.describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE", f"table {table}")
    celery = manifest.get("celery", {})
    if celery.get("results"):
        results = celery.get("results_table") or f"{project}-celery-results"
        described = ddb.describe_table(TableName=results)["Table"]
        check(
            described["TableStatus"] == "ACTIVE"
            and described["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}],
            f"Celery result table {results}, hash key id",
        )
    queue_arns = {}
    for name, module in sorted(manifest["modules"].items()):
        settings = {**MODULE_DEFAULTS, **module}
        queue, dlq = sqs_queue_name(manifest, project, module["queue"]), f"{project}-{module['queue']}-dlq"
        _, attributes = queue_attributes(sqs, queue)
        _, dlq_attributes = queue_attributes(sqs, dlq)
        queue_arns[module["queue"]] = attributes["QueueArn"]
        max_receive = manifest.get("queues", {}).get(module["queue"], {}).get("max_receive_count", MAX_RECEIVE_DEFAULT)
        redrive = json.loads(attributes.get("RedrivePolicy", "{}"))
        visibility = 6 * settings["timeout"] + settings["batching_window"]
        check(
            int(attributes["VisibilityTimeout"]) == visibility
            and redrive.get("deadLetterTargetArn") == dlq_attributes["QueueArn"]
            and int(redrive.get("maxReceiveCount", -1)) == max_receive,
            f"module {name}: queue {queue}, visibility {visibility} s, to {dlq} after {max_receive} receives",
        )
        function = f"{project}-{name}"
        config = lam.get_function_configuration(FunctionName=function)
        mapping = (lam.list_event_source_mappings(FunctionName=function)["EventSourceMappings"] or [{}])[0]
        check(
            config["MemorySize"] == settings["memory"] and config["Timeout"] == settings["timeout"]
            and mapping.get("EventSourceArn") == attributes["QueueArn"]
            and mapping.get("BatchSize") == settings["batch_size"]
            and mapping.get("ScalingConfig", {}).get("MaximumConcurrency") == settings["max_concurrency"],
            f"module {name}: function {function}, {settings['memory']} MB, {settings['timeout']} s, "
            f"batches of {settings['batch_size']}, {settings['max_concurrency']} at once",
        )
    default_queue = manifest["project"].get("default_queue", "default")
    for name, schedule in sorted(manifest.get("schedules", {}).items()):
        routed = next(
            (r["queue"] for r in manifest.get("routes", []) if fnmatch.fnmatchcase(schedule["task"], r["pattern"])),
            default_queue,
        )
        queue = schedule.get("queue", routed)
        rule = f"{project}-{name}"
        described = events.describe_rule(Name=rule)
        targets = events.list_targets_by_rule(Rule=rule)["Targets"]
        state = "ENABLED" if schedule.get("enabled", True) else "DISABLED"
        check(
            described["State"] == state and [t["Arn"] for t in targets] == [queue_arns[queue]]
            and ("expression" not in schedule or described["ScheduleExpression"] == schedule["expression"]),
            f"schedule {name}: rule {rule} ({state}) sends {schedule['task']} to queue {project}-{queue}",
        )


def queue_attributes(sqs, name):
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def check_queues(sam, sqs, outputs):
    print("==> queues and dead-letter queues")
    queues = resources_of(sam, "AWS::SQS::Queue")
    for rid, queue in sorted(queues.items()):
        props = queue["Properties"]
        url, attributes = queue_attributes(sqs, props["QueueName"])
        check(True, f"{props['QueueName']} exists")
        check(
            int(attributes["MessageRetentionPeriod"]) == props["MessageRetentionPeriod"],
            f"{props['QueueName']} keeps messages {props['MessageRetentionPeriod']} s",
        )
        if "VisibilityTimeout" in props:
            check(
                int(attributes["VisibilityTimeout"]) == props["VisibilityTimeout"],
                f"{props['QueueName']} visibility timeout {props['VisibilityTimeout']} s",
            )
        if "RedrivePolicy" in props:
            redrive = json.loads(attributes.get("RedrivePolicy", "{}"))
            dlq_id = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
            _, dlq_attributes = queue_attributes(sqs, queues[dlq_id]["Properties"]["QueueName"])
            check(
                redrive.get("deadLetterTargetArn") == dlq_attributes["QueueArn"]
                and int(redrive.get("maxReceiveCount", -1)) == props["RedrivePolicy"]["maxReceiveCount"],
                f"{props['QueueName']} redrives to {queues[dlq_id]['Properties']['QueueName']} "
                f"after {props['RedrivePolicy']['maxReceiveCount']} receives",
            )
        # moto answers Ref with AWS's URL form and GetQueueUrl with its own host: compare paths.
        output = outputs.get(f"{rid}Url", "")
        check(output.split("/")[-2:] == url.split("/")[-2:], f"output {rid}Url is {props['QueueName']}'s URL")


def check_table(sam, ddb, outputs):
    print("==> tables (task records; Celery results with [celery] results = true)")
    for rid, table in resources_of(sam, "AWS::DynamoDB::Table").items():
        props = table["Properties"]
        described = ddb.describe_table(TableName=props["TableName"])["Table"]
        check(True, f"table {props['TableName']} exists")
        check(described["KeySchema"] == props["KeySchema"], f"{props['TableName']} key schema {props['KeySchema']}")
        billing = described.get("BillingModeSummary", {}).get("BillingMode")
        check(billing == props["BillingMode"], f"{props['TableName']} billing {props['BillingMode']} (got {billing})")
        indexes = {i["IndexName"]: i for i in described.get("GlobalSecondaryIndexes", [])}
        for index in props.get("GlobalSecondaryIndexes", []):
            got = indexes.get(index["IndexName"])
            check(
                got is not None and got["KeySchema"] == index["KeySchema"]
                and got["Projection"]["ProjectionType"] == index["Projection"]["ProjectionType"],
                f"index {index['IndexName']} on {[k['AttributeName'] for k in index['KeySchema']]}",
            )
        check(outputs.get(f"{rid}Name") == props["TableName"], f"output {rid}Name is {props['TableName']}")


def check_rules(sam, events, sqs):
    print("==> schedule rules and their targets")
    queues = resources_of(sam, "AWS::SQS::Queue")
    for rid, rule in sorted(resources_of(sam, "AWS::Events::Rule").items()):
        props = rule["Properties"]
        described = events.describe_rule(Name=props["Name"])
        check(
            described["ScheduleExpression"] == props["ScheduleExpression"] and described["State"] == props["State"],
            f"rule {props['Name']}: {props['ScheduleExpression']}, {props['State']}",
        )
        targets = events.list_targets_by_rule(Rule=props["Name"])["Targets"]
        expected = props["Targets"][0]
        queue_id = expected["Arn"]["Fn::GetAtt"][0]
        _, attributes = queue_attributes(sqs, queues[queue_id]["Properties"]["QueueName"])
        got = targets[0] if len(targets) == 1 else {}
        check(got.get("Arn") == attributes["QueueArn"], f"rule {props['Name']} targets {queues[queue_id]['Properties']['QueueName']}")
        transformer = got.get("InputTransformer", {})
        check(
            transformer.get("InputTemplate") == expected["InputTransformer"]["InputTemplate"]
            and transformer.get("InputPathsMap") == expected["InputTransformer"]["InputPathsMap"],
            f"rule {props['Name']} keeps its input transformer as rendered",
        )
        # Read by another JSON parser than the Rust tests': two firings, two task ids.
        bodies = [
            json.loads(substitute(expected["InputTransformer"]["InputTemplate"], {"id": str(uuid.uuid4()), "time": "2026-12-03T03:00:00Z"}))
            for _ in range(2)
        ]
        check(
            all(b["version"] == 1 and b["task"] and isinstance(b["args"], list) and isinstance(b["kwargs"], dict) for b in bodies)
            and bodies[0]["id"] != bodies[1]["id"],
            f"rule {props['Name']} fires envelopes with fresh ids",
        )


def wildcards(documents):
    """Actions with `*`, and resources that are `*` or end in one (but a log group's streams)."""
    found = []
    for document in documents:
        for statement in document["Statement"]:
            for key in ("Action", "Resource"):
                values = statement[key] if isinstance(statement[key], list) else [statement[key]]
                for value in values:
                    log_streams = key == "Resource" and ":log-group:" in value and value.count("*") == 1 and value.endswith(":*")
                    if "*" in value and not log_streams:
                        found.append(value)
    return found


def policy_document(document):
    """moto returns a role policy as JSON, URL-encoded JSON, or a Python dict's repr."""
    if isinstance(document, dict):
        return document
    text = urllib.parse.unquote(document)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


def check_functions(sam, plain, lam, iam, sqs, parameters):
    print("==> functions, roles and SQS triggers")
    queues = resources_of(sam, "AWS::SQS::Queue")
    for rid, function in sorted(resources_of(sam, "AWS::Serverless::Function").items()):
        props = function["Properties"]
        name = props["FunctionName"]
        config = lam.get_function_configuration(FunctionName=name)
        check(
            config["Runtime"] == props["Runtime"] and config["Handler"] == props["Handler"],
            f"function {name}: {props['Runtime']}, handler {props['Handler']}",
        )
        # moto's CloudFormation drops Architectures; check what it was given instead.
        translated = plain["Resources"][rid]["Properties"]
        check(translated.get("Architectures") == props["Architectures"], f"function {name} is built for {props['Architectures']}")
        check(
            config["MemorySize"] == props["MemorySize"] and config["Timeout"] == props["Timeout"],
            f"function {name}: {props['MemorySize']} MB, {props['Timeout']} s",
        )
        variables = config.get("Environment", {}).get("Variables", {})
        expected = set()
        for variable, value in props["Environment"]["Variables"].items():
            condition = value.get("Fn::If", [None])[0] if isinstance(value, dict) else None
            if condition is None or parameters.get(condition.removesuffix("IsSet")):
                expected.add(variable)
        got = "" if set(variables) == expected else f" (got {sorted(variables)})"
        check(not got, f"function {name} has variables {sorted(expected)}{got}")
        for variable, value in props["Environment"]["Variables"].items():
            if isinstance(value, dict) and "Fn::Sub" in value:
                check(
                    variables.get(variable, "").startswith("{{resolve:secretsmanager:"),
                    f"function {name}: {variable} comes from Secrets Manager",
                )
        role_name = config["Role"].rsplit("/", 1)[-1]
        policies = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        documents = [policy_document(iam.get_role_policy(RoleName=role_name, PolicyName=p)["PolicyDocument"]) for p in policies]
        found = wildcards(documents)
        check(bool(documents) and not found, f"role of {name} has no wildcard action or resource {found or ''}".rstrip())
        trigger = props["Events"]["Queue"]["Properties"]
        queue_id = trigger["Queue"]["Fn::GetAtt"][0]
        _, attributes = queue_attributes(sqs, queues[queue_id]["Properties"]["QueueName"])
        mappings = lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        mapping = mappings[0] if len(mappings) == 1 else {}
        check(
            mapping.get("EventSourceArn") == attributes["QueueArn"]
            and mapping.get("BatchSize") == trigger["BatchSize"]
            and mapping.get("MaximumBatchingWindowInSeconds") == trigger["MaximumBatchingWindowInSeconds"]
            and mapping.get("FunctionResponseTypes") == trigger["FunctionResponseTypes"]
            and mapping.get("ScalingConfig") == trigger["ScalingConfig"],
            f"function {name} is triggered by {queues[queue_id]['Properties']['QueueName']}: batches of "
            f"{trigger['BatchSize']}, window {trigger['MaximumBatchingWindowInSeconds']} s, "
            f"{trigger['ScalingConfig']['MaximumConcurrency']} at once, partial batch failures",
        )


if __name__ == "__main__":
    sys.exit(main())

"""The web UI in a real browser: with a batch job, a service and a pipeline
running on `cohort up`, headless Chromium renders each tab and the rendered
page must name them, their states and their nodes.

    python ui_check.py COHORT_BINARY HOST:PORT DATA_DIR [SCREENSHOT.png]
"""

import json
import subprocess
import sys
import time

from cli import cohort
from confluent_kafka import Producer

# The page is served over TLS under the cluster's own CA, which this
# throwaway browser profile does not trust.
BROWSER = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--ignore-certificate-errors"]


def spec(data_dir, name, text):
    path = f"{data_dir}/{name}.toml"
    with open(path, "w") as f:
        f.write(text)
    return path


def render(url):
    """The DOM after the page's script has fetched and drawn."""
    out = subprocess.run(BROWSER + ["--virtual-time-budget=10000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"chromium failed on {url}: {out.stderr[-2000:]}")
    return out.stdout


def main(binary, address, data_dir, screenshot=None):
    status = json.loads(cohort(binary, address, "status", "--output", "json"))
    http, bootstrap = status["http"], status["kafka_bootstrap"]
    with open(f"{data_dir}/cluster/coordinator/admin.token") as f:
        token = f.read().strip()

    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(100):
        producer.produce("ui-clicks", value=json.dumps({"user_id": i, "url": f"/p/{i}"}))
    assert producer.flush(30) == 0
    cohort(binary, address, "submit", spec(data_dir, "ui-batch", """name = "ui-batch"
[gang]
cpu = "250m"
memory = "64MiB"
[command]
argv = ["sleep", "600"]
"""))
    cohort(binary, address, "submit", spec(data_dir, "ui-web", """name = "ui-web"
kind = "service"
[gang]
cpu = "250m"
memory = "128MiB"
[command]
argv = ["sh", "-c", "exec python3 -m http.server $COHORT_PORT_HTTP"]
[service]
instances = 1
ports = ["http"]
[service.health]
http = "/"
interval = "1s"
"""))
    cohort(binary, address, "pipeline", "create", spec(data_dir, "ui-pipeline", f"""name = "ui-pipeline"
[source.kafka]
topic = "ui-clicks"
schema = {{ user_id = "Int64", url = "Utf8" }}
[sink.parquet]
path = "{data_dir}/ui-out/"
[parallelism]
cpu = "250m"
memory = "256MiB"
"""))

    deadline = time.time() + 120
    while True:
        jobs = {j["name"]: j for j in json.loads(cohort(binary, address, "jobs", "--output", "json"))}
        names = ["ui-batch", "ui-web", "ui-pipeline"]
        healthy = any(s.get("healthy") for s in jobs.get("ui-web", {}).get("slots", []))
        if all(jobs.get(n, {}).get("state") == "running" for n in names) and healthy:
            break
        if time.time() > deadline:
            raise SystemExit(f"the workloads did not all run in 120 s: {jobs}")
        time.sleep(0.5)
    nodes = {n: {s["node"] for s in jobs[n]["slots"] if s["state"] == "running"} for n in names}

    expected = {
        "overview": [*names, "running", *set().union(*nodes.values())],
        "jobs": [*names, "running", *set().union(*nodes.values())],
        "nodes": [f"{n}[0]" for n in names],
        "services": ["ui-web", "healthy", *nodes["ui-web"]],
        "pipelines": ["ui-pipeline", "ui-clicks", *nodes["ui-pipeline"]],
    }
    for tab, words in expected.items():
        dom = render(f"https://{http}/?token={token}#{tab}")
        missing = [w for w in words if w not in dom]
        if missing:
            raise SystemExit(f"the {tab} tab lacks {missing}; rendered:\n{dom[-3000:]}")
    if screenshot:
        subprocess.run(BROWSER + ["--virtual-time-budget=10000", "--window-size=1280,900",
                                  f"--screenshot={screenshot}", f"https://{http}/?token={token}#overview"],
                       check=True, capture_output=True, timeout=120)
    print(f"web UI: {len(expected)} tabs rendered by headless Chromium name the job, service, pipeline and their nodes")
    for name in ["ui-batch", "ui-web"]:
        cohort(binary, address, "cancel", name)
    cohort(binary, address, "pipeline", "delete", "ui-pipeline")


if __name__ == "__main__":
    main(*sys.argv[1:])

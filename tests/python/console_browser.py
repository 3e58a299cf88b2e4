"""Drives a real headless Chromium (Debian's chromium and chromium-driver,
through selenium) on camnode's console, for tests/console.rs and for the
README's screenshot.

Talks to its caller in lines: it prints "tiles N" once N tiles show an
image, "updated" once every tile not stale has shown a newer one, then for each line
"stopped NODE" it reads on stdin it waits for NODE's tile to be marked
stale and prints "stale NODE". "screenshot PATH [WIDTHxHEIGHT]" saves a
screenshot. End of input ends it. Every wait polls the page with a
deadline; none sleeps blindly.
"""

import argparse
import json
import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

# What the tiles show, read from the page itself.
TILES = """
return [...document.querySelectorAll('#grid .tile')].map(t => ({
  node: t.dataset.node, view: t.dataset.view, shown: Number(t.dataset.shown || 0),
  stale: t.classList.contains('stale'), badge: t.querySelector('.badge').textContent,
  loaded: t.querySelector('img').naturalWidth > 0,
}));
"""


def browser(user_data_dir, width, height):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # A closed network: no sign-in, updates, sync or QUIC probes.
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}",
                 "--hide-scrollbars", "--force-device-scale-factor=1"]:
        options.add_argument(flag)
    service = Service(executable_path="/usr/bin/chromedriver", log_output=os.devnull)
    return webdriver.Chrome(service=service, options=options)


def say(line):
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--tiles", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--size", default="1280x860")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(profile, width, height)
        try:
            run(driver, args)
        finally:
            driver.quit()


def run(driver, args):
    wait = WebDriverWait(driver, args.timeout, poll_frequency=0.1)
    driver.get(args.url)
    tiles = wait.until(lambda d: (lambda t: t if len(t) >= args.tiles and all(x["loaded"] for x in t) else None)(d.execute_script(TILES)),
                       f"{args.tiles} tiles with an image")
    say(f"tiles {len(tiles)}")
    first = {(t["node"], t["view"]): t["shown"] for t in tiles}
    wait.until(lambda d: all(t["shown"] > first.get((t["node"], t["view"]), 0) for t in d.execute_script(TILES) if not t["stale"]),
               "every live tile to show a newer image")
    say("updated")
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "stopped":
            node = rest
            tiles = wait.until(lambda d: (lambda t: t if any(x["node"] == node and x["stale"] for x in t) else None)(d.execute_script(TILES)),
                               f"{node}'s tile to turn stale")
            others = [t for t in tiles if t["node"] != node]
            assert not any(t["stale"] for t in others), json.dumps(tiles)
            badge = next(t["badge"] for t in tiles if t["node"] == node)
            summary = driver.find_element("id", "summary").text
            say(f"stale {node} badge={badge!r} summary={summary!r}")
        elif command == "screenshot":
            path, _, size = rest.partition(" ")
            if size:
                width, height = (int(x) for x in size.split("x"))
                driver.set_window_size(width, height)
                # Two frames later the grid has been laid out at the new size.
                driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
            driver.save_screenshot(path)
            say(f"saved {path}")
        elif command == "open":
            driver.get(rest)
            say(f"opened {rest}")
        elif command == "js":
            say("js " + json.dumps(driver.execute_script(rest)))


if __name__ == "__main__":
    main()

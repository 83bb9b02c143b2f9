"""Open a local HTML page in headless Chromium and report what happened, stdlib only.

It talks the Chrome DevTools Protocol (CDP) over `--remote-debugging-pipe`: Chromium reads
JSON commands from its fd 3 and writes replies and events to its fd 4, each message ending in
a NUL byte. One select() loop with a deadline reads the replies, so no wait can hang.

    python tests/browser.py REPORT.html --screenshot out.png [--width 1300]
prints the PageReport as JSON and exits 1 if the page logged errors or made requests."""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from base64 import b64decode
from pathlib import Path
from urllib.parse import unquote, urldefrag

# Runs in the child: put the two pipe ends at fds 3 and 4, close the originals, exec Chromium.
_TRAMPOLINE = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
               "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@dataclasses.dataclass
class PageReport:
    console: list[dict] = dataclasses.field(default_factory=list)   # {level, text} per console API call
    errors: list[str] = dataclasses.field(default_factory=list)     # console.error, exceptions, Log errors
    requests: list[str] = dataclasses.field(default_factory=list)   # URLs other than the page itself
    checks: dict = dataclasses.field(default_factory=dict)          # check name -> JS value
    screenshot: str | None = None


class _Browser:
    """One Chromium process and the CDP pipe to it."""

    def __init__(self, exe: str, profile: str, deadline: float):
        self.deadline, self.next_id, self.buffer, self.events = deadline, 0, b"", []
        self.stderr_path = os.path.join(profile, "stderr.txt")
        args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox on
        # Chromium must find the pipes at fds 3 and 4. Rather than dup2 onto 3 and 4 in a
        # preexec_fn (this process's own fds 3 and 4 belong to others, e.g. font files that
        # matplotlib's GC may close mid-Popen, so Popen's error pipe can take those numbers),
        # we pass fds we own and a tiny trampoline moves them into place, then execs Chromium.
        child_in, self.to_child = os.pipe()      # Chromium reads commands from child_in (its fd 3)
        self.from_child, child_out = os.pipe()   # and writes replies to child_out (its fd 4)
        # numbers above 4, so moving one onto 3 cannot clobber the other before it is moved
        high_in, high_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in (child_in, child_out))
        for fd in (child_in, child_out):
            os.close(fd)
        trampoline = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(high_in), str(high_out)]
        try:
            with open(self.stderr_path, "wb") as stderr:  # kept out of the way; its tail explains a crash
                self.proc = subprocess.Popen(trampoline + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=stderr, pass_fds=(high_in, high_out),
                                             start_new_session=True)  # its own group: close() kills all
        except BaseException:
            os.close(self.to_child)
            os.close(self.from_child)
            raise
        finally:
            for fd in (high_in, high_out):
                os.close(fd)  # closing our copy of the write end is what makes EOF mean "it died"

    def stderr_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(Path(self.stderr_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its reply; a CDP error becomes a RuntimeError."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.to_child, data):]
        reply = self._wait(lambda m: m.get("id") == self.next_id, f"the reply to {method}")
        if "error" in reply:
            raise RuntimeError(f"CDP {method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, after: int = 0) -> dict:
        """The first event `method` of `session` received at index `after` or later."""
        for event in self.events[after:]:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        return self._wait(lambda m: m.get("method") == method and m.get("sessionId") == session, method)

    def _wait(self, wanted, what: str) -> dict:
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)  # every event is kept: the report is built from them
                if wanted(msg):
                    return msg
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_child], [], [], left)[0]:
                raise RuntimeError(f"timed out waiting for {what} from Chromium")
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited while waiting for {what} (exit code {self.proc.poll()}); "
                                   f"its last stderr lines:\n{self.stderr_tail()}")
            self.buffer += chunk

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.deadline = min(self.deadline, time.monotonic() + 5)  # a polite close, briefly
                try:
                    self.send("Browser.close")
                    self.proc.wait(timeout=5)
                except (RuntimeError, OSError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # helpers (zygote, renderers) share its group
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        finally:
            os.close(self.to_child)
            os.close(self.from_child)


def _text(args: list[dict]) -> str:
    """A console call's arguments as one line, like DevTools shows them."""
    return " ".join(str(a["value"]) if "value" in a else str(a.get("description", a.get("unserializableValue", "")))
                    for a in args)


def open_page(html: Path, screenshot: Path | None = None, width: int = 1300, timeout: float = 60.0,
              checks: dict[str, str] | None = None) -> PageReport:
    """Load `html` (a local file), evaluate `checks` after its load event, optionally save a
    full-page PNG, and report console output, errors and any network request it made."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium not found (apt-get install chromium)")
    url = Path(html).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="atlas-chromium-")
    browser = None
    try:
        browser = _Browser(exe, profile, time.monotonic() + timeout)
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=sid)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, sid)

        def evaluate(expression: str):
            result = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, sid)
            if "exceptionDetails" in result:
                details = result["exceptionDetails"]
                thrown = details.get("exception", {}).get("description") or details.get("text")
                raise RuntimeError(f"{expression!r} threw in the page: {thrown}")
            return result["result"].get("value")

        mark = len(browser.events)
        nav = browser.send("Page.navigate", {"url": url}, sid)
        if nav.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {nav['errorText']}")
        while True:  # a late load event of about:blank must not count as the page's
            event = browser.wait_event("Page.loadEventFired", sid, mark)
            mark = browser.events.index(event) + 1
            if evaluate("document.readyState === 'complete' && location.protocol === 'file:'"):
                break
        report = PageReport(checks={name: evaluate(js) for name, js in (checks or {}).items()})
        if screenshot is not None:
            height = evaluate("Math.ceil(Math.max(document.documentElement.scrollHeight,"
                              " document.body ? document.body.scrollHeight : 0))")
            browser.send("Emulation.setDeviceMetricsOverride",  # the whole page is the viewport
                         {"width": width, "height": max(1, min(int(height), 16384)), "deviceScaleFactor": 1,
                          "mobile": False}, sid)
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, sid)
            Path(screenshot).write_bytes(b64decode(shot["data"]))
            report.screenshot = str(screenshot)
        evaluate("0")  # one more round trip: events the page sent before it have all arrived
        own = {url, unquote(url)}
        for event in browser.events:
            if event.get("sessionId") != sid:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                entry = {"level": params.get("type", "log"), "text": _text(params.get("args", []))}
                report.console.append(entry)
                if entry["level"] in ("error", "assert"):
                    report.errors.append(f"console.{entry['level']}: {entry['text']}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                report.errors.append("exception: " + (details.get("exception", {}).get("description")
                                                      or details.get("text", "")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]  # e.g. "Failed to load resource", a CSP violation
                report.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                requested = params.get("request", {}).get("url", "")
                base = urldefrag(requested).url
                if base not in own and unquote(base) not in own and not requested.startswith("data:"):
                    report.requests.append(requested)
        return report
    finally:
        if browser is not None:
            browser.close()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1300)
    args = parser.parse_args(argv)
    report = open_page(args.html, args.screenshot, args.width)
    print(json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False))
    return 1 if report.errors or report.requests else 0


if __name__ == "__main__":
    sys.exit(main())

"""A small headless-Chromium driver for the viewer tests and benchmark (standard library only).

It speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe``: the browser reads
commands from its file descriptor 3 and writes replies and events to its descriptor 4, each a JSON
message ended by a NUL byte, so no websocket library is needed. Every wait has a deadline, and the
browser is killed when the ``with`` block ends, whatever happened::

    with Browser() as browser:
        page = browser.open("/tmp/view.html")       # waits for the load event
        page.wait_for("window.pyllmViewer && pyllmViewer.ready")
        page.eval("pyllmViewer.T")
        page.click(x, y); page.hover(x, y)
        page.console_errors, page.exceptions, page.log_errors, page.requests

:func:`find_chromium` gives the browser's path or None (``PYLLM_CHROMIUM`` overrides the search).
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Browser", "BrowserError", "BrowserUnavailable", "JSError", "Page", "find_chromium"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
              "headless_shell")

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-default-apps", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--window-size=1280,1000")


class BrowserError(RuntimeError):
    """The browser did not answer in time, went away, or answered a command with an error."""


class BrowserUnavailable(BrowserError):
    """No browser was found, or it exited before it answered its first command."""


class JSError(BrowserError):
    """An expression evaluated in the page threw."""


def find_chromium():
    """The Chromium/Chrome binary to use, or None. ``PYLLM_CHROMIUM`` (a path or a command name)
    overrides the search; set to an empty string it disables the browser tests."""
    env = os.environ.get("PYLLM_CHROMIUM")
    if env is not None:
        return shutil.which(env) if env else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _fd_above(fd, lowest):
    """fd moved to a descriptor number >= lowest, close-on-exec (the old one closed)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return new


class Browser:
    """One headless Chromium process, driven over a pipe. Use as a context manager."""

    def __init__(self, binary=None, timeout=20.0):
        self.binary = binary or find_chromium()
        self.timeout = timeout
        self.proc = None
        self._tmp = None
        self._to_browser = self._from_browser = None
        self._buf = b""
        self._next_id = 0
        self._events = []           # (method, params, sessionId) not yet claimed
        self._pages = {}            # sessionId -> Page

    # ---- process ----------------------------------------------------------------------------
    def start(self):
        if not self.binary:
            raise BrowserUnavailable("no Chromium found (tried %s; set PYLLM_CHROMIUM)"
                                     % ", ".join(CANDIDATES))
        self._tmp = tempfile.mkdtemp(prefix="pyllm-chromium-")
        cmd_r, cmd_w = os.pipe()    # we write commands, the browser reads them on its fd 3
        out_r, out_w = os.pipe()    # the browser writes replies on its fd 4, we read them
        # the child's ends must not be numbered 3 or 4 (dup2 would clobber them): move them
        cmd_r, out_w = (_fd_above(fd, 10) for fd in (cmd_r, out_w))
        argv = [self.binary, *FLAGS, "--user-data-dir=" + os.path.join(self._tmp, "profile"),
                "--remote-debugging-pipe", "about:blank"]

        def pipes_to_3_and_4():     # in the child, before exec: the browser's fds 3 and 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)       # dup2 copies are inheritable; every other fd of ours is not

        self._log = open(os.path.join(self._tmp, "chromium.log"), "wb")
        try:
            self.proc = subprocess.Popen(argv, preexec_fn=pipes_to_3_and_4, close_fds=False,
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(cmd_w)
            os.close(out_r)
            self.close()
            raise BrowserUnavailable("could not start %s: %s" % (self.binary, exc)) from exc
        finally:
            os.close(cmd_r)
            os.close(out_w)
        self._to_browser, self._from_browser = cmd_w, out_r
        try:
            self.version = self.call("Browser.getVersion")
        except BrowserError as exc:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise BrowserUnavailable("%s exited before answering (status %s): %s"
                                         % (self.binary, self.proc.returncode, tail)) from exc
            self.close()
            raise
        return self

    def log_tail(self, n=800):
        try:
            with open(os.path.join(self._tmp, "chromium.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:].strip()
        except OSError:
            return ""

    def close(self):
        """Ask the browser to quit, then kill it if it has not; remove its profile."""
        try:
            if self.proc is not None and self.proc.poll() is None and self._to_browser is not None:
                try:
                    self.send("Browser.close")
                    self.proc.wait(timeout=3)
                except (BrowserError, OSError, subprocess.TimeoutExpired):
                    pass
        finally:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, 9)   # its own session: the browser and its helpers
                except OSError:
                    self.proc.kill()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            for fd in (self._to_browser, self._from_browser):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._to_browser = self._from_browser = None
            if getattr(self, "_log", None) is not None:
                self._log.close()
                self._log = None
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- protocol ---------------------------------------------------------------------------
    def send(self, method, params=None, session_id=None):
        """Send a command; returns its id (the reply is collected by :meth:`call`)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        data = json.dumps(msg).encode("utf-8") + b"\0"
        try:
            while data:
                data = data[os.write(self._to_browser, data):]
        except (OSError, TypeError) as exc:
            raise BrowserError("the browser is gone (%s)" % exc) from exc
        return self._next_id

    def _read_message(self, deadline):
        """The next message from the browser, or None when the deadline passes."""
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError("the browser closed its pipe (exit status %s): %s"
                                   % (self.proc.poll(), self.log_tail()))
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw.decode("utf-8"))

    def _dispatch(self, msg):
        session = msg.get("sessionId")
        page = self._pages.get(session)
        if page is not None:
            page._record(msg["method"], msg.get("params", {}))
        self._events.append((msg["method"], msg.get("params", {}), session))

    def call(self, method, params=None, session_id=None, timeout=None):
        """Send a command and wait for its result (events that arrive meanwhile are recorded)."""
        cid = self.send(method, params, session_id)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read_message(deadline)
            if msg is None:
                raise BrowserError("no answer to %s within %.0f s" % (method, timeout or self.timeout))
            if msg.get("id") == cid:
                if "error" in msg:
                    raise BrowserError("%s failed: %s" % (method, msg["error"].get("message")))
                return msg.get("result", {})
            if "method" in msg:
                self._dispatch(msg)

    def wait_event(self, method, session_id=None, timeout=None, since=0):
        """Wait for an event (already received after index ``since``, or a new one); its params."""
        deadline = time.monotonic() + (timeout or self.timeout)
        i = since
        while True:
            for m, params, sess in self._events[i:]:
                if m == method and (session_id is None or sess == session_id):
                    return params
            i = len(self._events)
            msg = self._read_message(deadline)
            if msg is None:
                raise BrowserError("no %s event within %.0f s" % (method, timeout or self.timeout))
            if "method" in msg:
                self._dispatch(msg)

    def pump(self, seconds):
        """Collect events for a while (e.g. console messages that follow an action)."""
        deadline = time.monotonic() + seconds
        while True:
            msg = self._read_message(deadline)
            if msg is None:
                return
            if "method" in msg:
                self._dispatch(msg)

    # ---- pages ------------------------------------------------------------------------------
    def open(self, path, width=1280, height=1000, timeout=None):
        """A new tab showing the file at ``path``; returns once its load event has fired."""
        page = self.new_page(width, height)
        page.navigate(path, timeout=timeout)
        return page

    def new_page(self, width=1280, height=1000):
        """A new tab (about:blank), its events recorded, in a viewport of width x height."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(domain + ".enable", session_id=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session_id=session)
        return page


class Page:
    """One tab: evaluate, click, hover; what it logged and requested is recorded."""

    def __init__(self, browser, target_id, session_id):
        self.browser, self.target_id, self.session_id = browser, target_id, session_id
        self.url = None
        self.console_errors = []    # console.error / console.warn texts
        self.exceptions = []        # uncaught exceptions
        self.log_errors = []        # browser log entries of level error (CSP, failed loads, ...)
        self.requests = []          # every URL the page asked for

    def _record(self, method, params):
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.log_errors.append("%s (%s)" % (e.get("text", ""), e.get("url", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    @property
    def errors(self):
        """Everything that went wrong in the page: console errors, exceptions, log errors."""
        return self.console_errors + self.exceptions + self.log_errors

    def navigate(self, path, timeout=None):
        url = path if "://" in str(path) else Path(path).resolve().as_uri()
        self.url = url
        since = len(self.browser._events)
        result = self.browser.call("Page.navigate", {"url": url}, session_id=self.session_id)
        if result.get("errorText"):
            raise BrowserError("could not open %s: %s" % (url, result["errorText"]))
        self.browser.wait_event("Page.loadEventFired", self.session_id, timeout, since=since)

    def eval(self, expression, timeout=None):
        """The value of a JavaScript expression (awaited when it is a promise), as JSON data."""
        result = self.browser.call("Runtime.evaluate",
                                   {"expression": expression, "returnByValue": True,
                                    "awaitPromise": True}, session_id=self.session_id,
                                   timeout=timeout)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise JSError("%s: %s" % (expression[:80], d.get("exception", {}).get("description")
                                      or d.get("text")))
        return result.get("result", {}).get("value")

    def wait_for(self, expression, timeout=10.0, interval=0.005):
        """Poll until a JavaScript expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError("%s still false after %.1f s; page errors: %s"
                                   % (expression, timeout, self.errors))
            time.sleep(interval)

    def mouse(self, kind, x, y, **extra):
        self.browser.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra},
                          session_id=self.session_id)

    def hover(self, x, y):
        self.mouse("mouseMoved", x, y)

    def click(self, x, y):
        """A real left click (move, press, release) at viewport coordinates."""
        self.hover(x, y)
        self.mouse("mousePressed", x, y, button="left", clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", clickCount=1)

    def center_of(self, selector):
        """Viewport coordinates of the centre of the first element matching a CSS selector,
        scrolled into view first."""
        box = self.eval("(() => { const e = document.querySelector(%s); if (!e) return null;"
                        " e.scrollIntoView({block: 'center', inline: 'center'});"
                        " const r = e.getBoundingClientRect();"
                        " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
                        % json.dumps(selector))
        if box is None:
            raise BrowserError("no element matches %s" % selector)
        return box

    def screenshot(self, path, full_page=True):
        """Save a PNG of the page (the whole page by default) to ``path``."""
        params = {"format": "png"}
        if full_page:
            size = self.eval("[document.documentElement.scrollWidth, "
                             "document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        data = self.browser.call("Page.captureScreenshot", params, session_id=self.session_id)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self):
        self.browser.call("Target.closeTarget", {"targetId": self.target_id})
        self.browser._pages.pop(self.session_id, None)


def browser_session():
    """A started headless Chromium for a test module (use as a module-scoped fixture); skips
    the module's browser tests where none can be found or started."""
    import pytest
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium/Chrome found: install chromium or set PYLLM_CHROMIUM")
    try:
        b = Browser(binary, timeout=30).start()
    except BrowserUnavailable as exc:
        pytest.skip("Chromium cannot run here: %s" % exc)
    try:
        yield b
    finally:
        b.close()

"""An accessibility audit with axe-core, run inside a Playwright page.

axe is a test asset (tests/assets, pinned; see the README), never served by the app. The
pages' Content-Security-Policy forbids inline and evaluated script, so axe can be added by
neither a `<script>` tag with content nor a string that the page compiles; `page.evaluate`
runs the source through the DevTools protocol, which the page's CSP does not govern.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError

AXE_VERSION = "4.14.1"
AXE_PATH = Path(__file__).resolve().parent / "assets" / f"axe-core-{AXE_VERSION}.min.js"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
# WCAG 2.0 and 2.1, levels A and AA, and axe's best practices.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]

_source: list[str] = []


def axe_source() -> str:
    """The vendored axe build, checked against its pinned digest once per session."""
    if not _source:
        data = AXE_PATH.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert digest == AXE_SHA256, f"{AXE_PATH.name} changed: sha256 {digest}"
        _source.append(data.decode("utf-8"))
    return _source[0]


def inject_axe(page) -> None:
    """Add axe to the page's current document (each navigation needs it again)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    version = page.evaluate("() => window.axe && window.axe.version")
    assert version == AXE_VERSION, f"axe did not load in {page.url}: {version!r}"


def _run_axe(page, skip: tuple[str, ...] = ()) -> dict:
    inject_axe(page)
    return page.evaluate(
        """([tags, skip]) => window.axe.run(document, {
            runOnly: { type: "tag", values: tags },
            rules: Object.fromEntries(skip.map((id) => [id, { enabled: false }])),
            resultTypes: ["violations"],
        })""",
        [AXE_TAGS, list(skip)],
    )


# For a document built without JavaScript: axe sequences its work with timers, which never
# fire in a browser context without JavaScript (evaluated code and promises still run), so
# timers become promise callbacks for the audit. And axe treats all <noscript> content as
# hidden, though such a browser shows it: it becomes plain spans, so that it is audited too.
AS_BUILT_WITHOUT_SCRIPTS = """() => {
    window.setTimeout = (callback, ms, ...args) => {
        Promise.resolve().then(() => callback(...args));
        return 0;
    };
    window.clearTimeout = () => {};
    for (const shown of document.body.querySelectorAll("noscript")) {
        const span = document.createElement("span");
        span.append(...shown.childNodes);
        shown.replaceWith(span);
    }
}"""


def axe_results(page, *, page_scripts: bool = True, skip: tuple[str, ...] = ()) -> dict:
    """axe's results for the page as it is now (WCAG 2.0/2.1 A and AA, best practices).

    `page_scripts=False` for a page in a browser context with JavaScript turned off; `skip`
    names rules not to run (each use says why).
    """
    for attempt in range(3):
        try:
            if not page_scripts:
                page.evaluate(AS_BUILT_WITHOUT_SCRIPTS)
            return _run_axe(page, skip)
        except PlaywrightError as exc:
            # A page that navigates by itself may do so mid-audit: audit the new document.
            if "context was destroyed" not in str(exc) or attempt == 2:
                raise
            page.wait_for_load_state("load")
    raise AssertionError("not reached")


def describe(violations: list[dict]) -> str:
    """One paragraph per violated rule: id, impact, help and its URL, then each element."""
    parts = []
    for rule in violations:
        lines = [f"{rule['id']} ({rule['impact']}): {rule['help']}", f"  {rule['helpUrl']}"]
        for node in rule["nodes"]:
            target = " ".join(" > ".join(t) if isinstance(t, list) else t for t in node["target"])
            lines.append(f"  - {target}: {node['html'][:160]}")
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            if summary:
                lines.append(f"      {summary[:300]}")
        parts.append("\n".join(lines))
    return "\n".join(parts)


def assert_accessible(
    page, state: str, *, page_scripts: bool = True, skip: tuple[str, ...] = ()
) -> dict:
    """Fail with every violation axe finds in the page as it is now; `state` names it.

    Returns the results, so that a test can also check what axe looked at.
    """
    results = axe_results(page, page_scripts=page_scripts, skip=skip)
    violations = results["violations"]
    assert not violations, (
        f"{len(violations)} accessibility rule(s) violated on {state} ({page.url}):\n"
        + describe(violations)
    )
    return results

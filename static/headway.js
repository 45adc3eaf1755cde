/* Headway's page behaviour: connection indicator, fallback to polling, tab title, upload bar.
   Plain JavaScript on top of htmx and its SSE extension; no build step. */
(function () {
  "use strict";

  var MAX_SSE_FAILURES = 3; // consecutive errors before polling takes over (transport "auto")
  var POLL_RETRY_MS = 2000;
  var FIRST_MESSAGE_MS = 8000; // a stream silent this long after the page loaded is stuck
  var NOTICE_MS = 12000; // how long a "job finished" notice stays
  var MAX_NOTICES = 3;
  var FINAL = ["succeeded", "failed", "cancelled", "interrupted"];
  var failures = 0;

  function byId(id) { return document.getElementById(id); }

  // "auto": falling back to polling is allowed (HEADWAY_TRANSPORT=sse forbids it).
  function auto() {
    return (byId("connection") || { dataset: {} }).dataset.transport !== "sse";
  }

  function setConnection(state, text) {
    var el = byId("connection");
    // Once the job has ended, a late stream or poll error changes nothing on the page.
    if (!el || (jobFinished() && state !== "finished")) { return; }
    el.dataset.state = state;
    el.querySelector(".connection-text").textContent = text;
  }

  function jobFinished() {
    var progress = byId("job-progress");
    return progress && FINAL.indexOf(progress.dataset.status) !== -1;
  }

  function refreshTitle() {
    var progress = byId("job-progress"), title = byId("job-title");
    if (progress && title) {
      document.title = progress.dataset.percent + "% · " + title.dataset.title;
    }
  }

  function poll() {
    var live = byId("job-live");
    if (live && !jobFinished()) {
      htmx.ajax("GET", live.dataset.pollUrl, { target: "#job-progress", swap: "outerHTML" });
    }
  }

  function pollRows() {
    var root = byId("live-root"), rows = byId("job-rows");
    if (root && rows) {
      htmx.ajax("GET", root.dataset.rowsUrl, { target: "#job-rows", swap: "outerHTML" });
    }
  }

  // The newest EventSource the SSE extension made, so that one that never opened (and so
  // never reported) can still be closed.
  var latestSource = null;
  var createEventSource = htmx.createEventSource;
  htmx.createEventSource = function (url) {
    latestSource = createEventSource(url);
    return latestSource;
  };

  function giveUpStream(elt, source) {
    if (source) { source.close(); }
    elt.removeAttribute("sse-connect");
    elt.removeAttribute("hx-ext");
  }

  // A proxy that buffers the stream (or a request that hangs) leaves the page silent though
  // nothing failed: the server sends the current state at once, so a page that has heard
  // nothing a while after loading polls instead.
  function expectFirstMessage() {
    var live = byId("job-live");
    if (!live || !live.hasAttribute("sse-connect")) { return; }
    window.setTimeout(function () {
      if (!live.dataset.heard && live.hasAttribute("sse-connect") && !jobFinished() && auto()) {
        giveUpStream(live, latestSource);
        setConnection("polling", "polling");
        poll();
      }
    }, FIRST_MESSAGE_MS);
  }

  document.addEventListener("htmx:sseOpen", function (evt) {
    failures = 0;
    if (evt.target.id === "job-live") { setConnection("live", "live"); }
  });

  document.addEventListener("htmx:sseMessage", function (evt) {
    if (evt.target.id === "job-live") { evt.target.dataset.heard = "1"; }
  });

  document.addEventListener("htmx:sseError", function (evt) {
    var elt = evt.target;
    failures += 1;
    if (failures < MAX_SSE_FAILURES || !auto()) {
      if (elt.id === "job-live") { setConnection("reconnecting", "reconnecting…"); }
      return;
    }
    giveUpStream(elt, evt.detail && evt.detail.source);
    if (elt.id === "job-live") {
      setConnection("polling", "polling");
      poll();
    } else if (elt.id === "live-root") {
      pollRows();
    }
  });

  // A failed poll (server restarting, Redis down) tries again instead of stopping.
  function pollFailed(evt) {
    var target = evt.detail.target;
    if (target && target.id === "job-progress") {
      setConnection("reconnecting", "reconnecting…");
      window.setTimeout(poll, POLL_RETRY_MS);
    } else if (target && target.id === "job-rows") {
      window.setTimeout(pollRows, POLL_RETRY_MS);
    }
  }
  document.addEventListener("htmx:responseError", pollFailed);
  document.addEventListener("htmx:sendError", pollFailed);

  document.addEventListener("htmx:afterSettle", function (evt) {
    refreshTitle();
    var connection = byId("connection");
    if (jobFinished() && connection) {
      setConnection("finished", "finished");
    } else if (evt.detail.target && evt.detail.target.id === "job-progress" &&
               connection && connection.dataset.state === "reconnecting" &&
               !byId("job-live").hasAttribute("sse-connect")) {
      setConnection("polling", "polling");
    }
  });

  // A refused upload (400, 408, 413, 422, 429, 503) comes back as the form's message region
  // alone (HX-Retarget): the message shows next to the form, and the chosen files and
  // options stay as they were.
  var REFUSALS = [400, 408, 413, 422, 429, 503];
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var status = evt.detail.xhr.status, target = evt.detail.target;
    if (target && (target.id === "form-feedback" || target.id === "job-form") &&
        REFUSALS.indexOf(status) !== -1) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });

  function formDone(form) {
    form.querySelector("button[type=submit]").disabled = false;
    var box = byId("upload-progress");
    if (box) { box.hidden = true; }
  }

  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt;
    if (form.id === "job-form" && !evt.detail.xhr.getResponseHeader("HX-Redirect")) {
      formDone(form);
    }
  });

  // The server may refuse a large upload before it is all sent and close the connection;
  // the browser then reports no answer at all.
  document.addEventListener("htmx:sendError", function (evt) {
    var form = evt.detail.elt, feedback = byId("form-feedback");
    if (form.id !== "job-form" || !feedback) { return; }
    formDone(form);
    feedback.innerHTML = "";
    var p = document.createElement("p");
    p.className = "form-error";
    p.id = "form-error";
    p.setAttribute("role", "alert");
    p.textContent = "The upload did not get through: the server closed the connection. " +
      "Check the files against the limits above and try again.";
    feedback.appendChild(p);
  });

  // The upload bar, while the browser sends the files.
  document.addEventListener("htmx:xhr:progress", function (evt) {
    var box = byId("upload-progress");
    if (!box || !evt.detail.lengthComputable) { return; }
    var pct = Math.floor(100 * evt.detail.loaded / Math.max(evt.detail.total, 1));
    box.hidden = false;
    box.querySelector("[role=progressbar]").setAttribute("aria-valuenow", pct);
    byId("upload-bar-fill").style.width = pct + "%";
    byId("upload-percent").textContent = pct + " %";
  });
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (evt.detail.elt.id === "job-form") {
      evt.detail.elt.querySelector("button[type=submit]").disabled = true;
    }
  });

  // "Job finished" notices stay a while, newest first, and never pile up.
  function tidyNotices(box) {
    var notices = box.querySelectorAll(".notice:not([data-shown])");
    Array.prototype.forEach.call(notices, function (notice) {
      notice.dataset.shown = "1";
      window.setTimeout(function () { notice.remove(); }, NOTICE_MS);
    });
    var all = box.querySelectorAll(".notice");
    for (var i = MAX_NOTICES; i < all.length; i++) { all[i].remove(); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    expectFirstMessage();
    var box = byId("notices");
    if (box) {
      new MutationObserver(function () { tidyNotices(box); }).observe(box, { childList: true });
    }
    refreshTitle();
    var connection = byId("connection");
    if (connection && connection.dataset.state === "polling") { setConnection("polling", "polling"); }
  });
})();

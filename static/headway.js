/* Headway's page behaviour: the live connection shared by all tabs (the hub is in
   headway-live.js), the connection indicator, fallback to polling, tab title, upload bar.
   Plain JavaScript on top of htmx; no build step. */
(function () {
  "use strict";

  var POLL_RETRY_MS = 2000;
  var FIRST_MESSAGE_MS = 8000; // a stream silent this long after the page loaded is stuck
  var NOTICE_MS = 12000; // how long a "job finished" notice stays
  var MAX_NOTICES = 3;
  var FINAL = ["succeeded", "failed", "cancelled", "interrupted"];

  function byId(id) { return document.getElementById(id); }

  // "auto": falling back to polling is allowed (HEADWAY_TRANSPORT=sse forbids it).
  function auto() {
    return (byId("live-root") || { dataset: {} }).dataset.transport !== "sse";
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

  // -- the live connection, one per browser, shared by its tabs (static/headway-live.js) --
  var HELLO_MS = 15000; // tabs tell the hub what they show this often (and on every change)
  var tabId = Math.random().toString(36).slice(2) + Date.now().toString(36);
  var link = null; // {send(message)}: to the hub, wherever it runs
  var liveState = "connecting";

  // What this tab shows: its job while it runs (with the version on screen) and, on the
  // other pages, the job list's rows and "job finished" notices; nothing while hidden.
  function interest() {
    var root = byId("live-root"), jobs = {}, progress = byId("job-progress");
    var live = byId("job-live");
    if (progress && live && live.dataset.live === "1" && !jobFinished()) {
      jobs[progress.dataset.job] = Number(progress.dataset.version);
    }
    return {
      type: "hello", tab: tabId, url: root.dataset.liveUrl, jobs: jobs,
      rows: root.dataset.rows === "1", visible: document.visibilityState !== "hidden",
    };
  }

  function say() { if (link) { link.send(interest()); } }

  function hubLink(hub) {
    return {
      send: function (m) {
        if (m.type === "bye") { hub.bye(m.tab); } else { hub.hello(m.tab, receive, m); }
      },
    };
  }

  // Without SharedWorker (Chrome on Android): the tab holding a Web Lock runs the hub and
  // relays over a BroadcastChannel; when it goes, the next tab gets the lock at once.
  function leaderLink() {
    var channel = new BroadcastChannel("headway-live");
    var hub = null;
    channel.onmessage = function (e) {
      var m = e.data;
      if (m.to !== undefined) { if (m.to === tabId) { receive(m); } return; }
      if (m.type === "leader") { say(); return; } // a new leader: tell it what I show
      if (hub) { hubLink(hub).send(m); }
    };
    navigator.locks.request("headway-live-leader", function () {
      hub = new HeadwayHub(byId("live-root").dataset.liveUrl);
      var relay = hub.hello;
      hub.hello = function (tab, send, m) { // others' messages go back over the channel
        var out = tab === tabId ? receive : function (msg) {
          channel.postMessage(Object.assign({ to: tab }, msg));
        };
        relay.call(hub, tab, out, m);
      };
      say();
      channel.postMessage({ type: "leader" });
      return new Promise(function () {}); // held for as long as this tab lives
    });
    return {
      send: function (m) { if (hub) { hubLink(hub).send(m); } else { channel.postMessage(m); } },
    };
  }

  function connectLive() {
    var root = byId("live-root");
    if (!root || root.dataset.liveUrl === undefined) { return; } // polling only, by setting
    if (window.SharedWorker) {
      try {
        var worker = new SharedWorker(root.dataset.workerUrl, { name: "headway-live" });
        worker.port.onmessage = function (e) { receive(e.data); };
        worker.port.start();
        link = { send: function (m) { worker.port.postMessage(m); } };
      } catch (e) {
        link = null;
      }
    }
    if (!link && window.BroadcastChannel && navigator.locks) { link = leaderLink(); }
    if (!link) { link = hubLink(new HeadwayHub(root.dataset.liveUrl)); }
    say();
    window.setInterval(say, HELLO_MS);
    document.addEventListener("visibilitychange", say);
    window.addEventListener("pagehide", function () { link.send({ type: "bye", tab: tabId }); });
    expectLive();
  }

  function receive(m) {
    if (m.type === "state") {
      showLiveState(m.state);
    } else if (m.type === "job") {
      showJob(m);
    } else if (m.type === "row") {
      var row = byId("job-row-" + m.job);
      if (row) { htmx.swap(row, m.html, { swapStyle: "outerHTML" }); }
    } else if (m.type === "notice") {
      var box = byId("notices");
      if (box) { htmx.swap(box, m.html, { swapStyle: "afterbegin" }); }
    }
  }

  // A job's message is its whole region (base null) or the change from version `base`: the
  // header, the items and log lines that changed, as out-of-band swaps.
  function showJob(m) {
    var progress = byId("job-progress");
    if (!progress || progress.dataset.job !== m.job) { return; }
    var have = Number(progress.dataset.version);
    if (m.base === null) {
      if (!(m.version > have)) { return; }
      htmx.swap(progress, m.html, { swapStyle: "outerHTML" });
    } else if (m.base === have) {
      htmx.swap(progress, m.html, { swapStyle: "none" });
      var header = byId("job-header"), log = byId("job-log");
      progress.className = "job status-" + header.dataset.status;
      ["status", "percent", "version"].forEach(function (name) {
        progress.dataset[name] = header.dataset[name];
      });
      while (log && log.children.length > Number(log.dataset.cap)) { log.lastElementChild.remove(); }
    } else {
      say(); // not the version this change starts from: the hub sends the whole region
      return;
    }
    refreshTitle();
    if (m.final) { setConnection("finished", "finished"); say(); }
  }

  function showLiveState(state) {
    liveState = state;
    if (state === "live") {
      setConnection("live", "live");
    } else if (state === "polling" && auto()) {
      fallBackToPolling();
    } else if (state !== "connecting") {
      setConnection("reconnecting", "reconnecting…");
    }
  }

  function fallBackToPolling() {
    setConnection("polling", "polling");
    poll();
    pollRows();
  }

  // A proxy that buffers the stream (or a request that hangs) leaves the page silent though
  // nothing failed: a page whose connection is not live a while after loading polls.
  function expectLive() {
    window.setTimeout(function () {
      if (liveState !== "live" && !jobFinished() && auto()) { fallBackToPolling(); }
    }, FIRST_MESSAGE_MS);
  }

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
               connection && connection.dataset.state === "reconnecting" && liveState !== "live") {
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
    connectLive();
    var box = byId("notices");
    if (box) {
      new MutationObserver(function () { tidyNotices(box); }).observe(box, { childList: true });
    }
    refreshTitle();
    var connection = byId("connection");
    if (connection && connection.dataset.state === "polling") { setConnection("polling", "polling"); }
  });
})();

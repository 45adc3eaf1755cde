/* Headway's page behaviour: the live connection shared by all tabs (the hub is in
   headway-live.js), the connection indicator, fallback to polling, the tab's title and
   favicon, "notify me when it finishes", what a screen reader hears as the job moves,
   times in the reader's time zone, and the upload form (drop, list, remove, limits,
   speed, cancel). Plain JavaScript on top of htmx; no build step. */
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
    drawFavicon();
    announce();
    maybeNotify();
  }

  // -- the favicon: the job's progress as a ring, then its outcome, seen from other tabs --
  var ICON_COLORS = { ring: "#d9dee3", run: "#2a62c9", ok: "#1f8a4c", bad: "#c0392b",
                      off: "#5d6875" };
  var iconKey = null;

  function drawFavicon() {
    var progress = byId("job-progress"), link = byId("favicon");
    if (!progress || !link) { return; }
    var status = progress.dataset.status, pct = Number(progress.dataset.percent) || 0;
    var key = status + ":" + pct;
    if (key === iconKey) { return; }
    var canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    var g = canvas.getContext("2d");
    if (!g) { return; }
    iconKey = key;
    g.lineCap = "round";
    if (status === "succeeded" || status === "failed" || status === "interrupted" ||
        status === "cancelled") {
      g.fillStyle = status === "succeeded" ? ICON_COLORS.ok :
        (status === "cancelled" ? ICON_COLORS.off : ICON_COLORS.bad);
      g.beginPath(); g.arc(16, 16, 15, 0, 2 * Math.PI); g.fill();
      g.strokeStyle = "#fff"; g.lineWidth = 4; g.beginPath();
      if (status === "succeeded") { // a tick
        g.moveTo(9, 16.5); g.lineTo(14, 21.5); g.lineTo(23, 11);
      } else if (status === "cancelled") { // a bar
        g.moveTo(10, 16); g.lineTo(22, 16);
      } else { // a cross
        g.moveTo(10.5, 10.5); g.lineTo(21.5, 21.5); g.moveTo(21.5, 10.5); g.lineTo(10.5, 21.5);
      }
      g.stroke();
    } else {
      g.lineWidth = 6;
      g.strokeStyle = ICON_COLORS.ring;
      g.beginPath(); g.arc(16, 16, 12, 0, 2 * Math.PI); g.stroke();
      if (pct > 0) {
        g.strokeStyle = ICON_COLORS.run;
        g.beginPath();
        g.arc(16, 16, 12, -Math.PI / 2, -Math.PI / 2 + 2 * Math.PI * Math.min(pct, 100) / 100);
        g.stroke();
      }
    }
    link.href = canvas.toDataURL("image/png");
    link.dataset.state = key;
  }

  // -- a polite live region: stage changes, every 10 %, the outcome; nothing else ---------
  var announced = null; // what was last said: {status, stage, tens}

  function announce() {
    var meter = byId("job-meter"), box = byId("job-announcer");
    if (!meter || !box) { return; }
    var now = { status: meter.dataset.status, stage: meter.dataset.stage,
                tens: Math.floor(Number(meter.dataset.percent) / 10) };
    if (announced === null) { announced = now; return; } // what the page showed on load
    var parts = [];
    if (FINAL.indexOf(now.status) !== -1) {
      if (now.status !== announced.status) { parts.push(outcomeText(now.status)); }
    } else {
      if (now.stage && now.stage !== announced.stage) { parts.push("Stage: " + now.stage + "."); }
      if (now.tens > announced.tens && now.tens < 10) { parts.push(now.tens * 10 + " percent."); }
    }
    if (now.tens < announced.tens && FINAL.indexOf(now.status) === -1) { now.tens = announced.tens; }
    announced = now;
    if (parts.length) { box.textContent = parts.join(" "); }
  }

  function outcomeText(status) {
    var error = byId("job-error");
    if (status === "succeeded") { return "The job succeeded. Your results are ready."; }
    if (status === "cancelled") { return "The job was cancelled."; }
    if (status === "interrupted") { return "The job was interrupted."; }
    return "The job failed." + (error ? " " + error.textContent : "");
  }

  // -- "Notify me when it finishes": asked on the click, fired once, only if hidden -------
  var notifyArmed = false, notified = false;

  function setupNotify() {
    var box = byId("notify"), button = byId("notify-button");
    if (!box || !button || !("Notification" in window) || jobFinished()) { return; }
    box.hidden = false;
    showNotify();
    button.addEventListener("click", function () {
      if (notifyArmed) { notifyArmed = false; showNotify(); say(); return; }
      Promise.resolve(Notification.requestPermission()).then(function (permission) {
        notifyArmed = permission === "granted";
        showNotify(permission === "denied" ?
          "Notifications are blocked for this site in the browser's settings." : "");
        say(); // an armed tab keeps its updates while hidden, to know when the job ends
      });
    });
  }

  function showNotify(note) {
    var button = byId("notify-button"), text = byId("notify-note");
    if (!button) { return; }
    button.setAttribute("aria-pressed", notifyArmed ? "true" : "false");
    text.textContent = note || (notifyArmed ?
      "You will get a notification if this tab is in the background when the job ends." : "");
  }

  function maybeNotify() {
    if (!notifyArmed || notified || !jobFinished()) { return; }
    notified = true;
    var box = byId("notify"), title = byId("job-title");
    if (box) { box.hidden = true; }
    if (document.visibilityState !== "hidden") { return; } // the page shows it already
    var status = byId("job-progress").dataset.status;
    try {
      var note = new Notification((title ? title.dataset.title : "Headway") , {
        body: outcomeText(status), tag: byId("job-progress").dataset.job, icon: byId("favicon").href,
      });
      note.onclick = function () { window.focus(); note.close(); };
    } catch (e) { /* no page notifications here (Chrome on Android): the title says it */ }
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
      rows: root.dataset.rows === "1",
      // A tab that will notify its person keeps its job's updates while hidden.
      visible: document.visibilityState !== "hidden" || (notifyArmed && !notified),
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

  // Replace `el` with `html`; a link that had the focus in it has it again in the new one.
  function swapKeepingFocus(el, html) {
    var focused = document.activeElement, id = el.id, href = null;
    if (focused && el.contains(focused)) { href = focused.getAttribute("href"); }
    htmx.swap(el, html, { swapStyle: "outerHTML" });
    if (href === null) { return; }
    var links = byId(id) ? byId(id).querySelectorAll("a[href]") : [];
    Array.prototype.forEach.call(links, function (a) {
      if (a.getAttribute("href") === href) { a.focus(); }
    });
  }

  function receive(m) {
    if (m.type === "state") {
      showLiveState(m.state);
    } else if (m.type === "job") {
      showJob(m);
    } else if (m.type === "row") {
      // A row the page already shows at this version stays as it is (a stream sends every
      // row when it opens): replacing it would take the focus from a link in it.
      var row = byId("job-row-" + m.job);
      if (row && !(Number(row.dataset.version) >= m.version)) { swapKeepingFocus(row, m.html); }
    } else if (m.type === "notice") {
      var box = byId("notices");
      if (box) { htmx.swap(box, m.html, { swapStyle: "afterbegin" }); }
    }
  }

  // A job's message is its whole region (base null) or the change from version `base`: the
  // parts (meter, facts, status line...), items and log lines that changed, as out-of-band swaps.
  function showJob(m) {
    var progress = byId("job-progress");
    if (!progress || progress.dataset.job !== m.job) { return; }
    var have = Number(progress.dataset.version);
    if (m.base === null) {
      if (!(m.version > have)) { return; }
      htmx.swap(progress, m.html, { swapStyle: "outerHTML" });
    } else if (m.base === have) {
      htmx.swap(progress, m.html, { swapStyle: "none" });
      var meter = byId("job-meter"), log = byId("job-log");
      progress.className = "job status-" + meter.dataset.status;
      progress.dataset.status = meter.dataset.status;
      progress.dataset.percent = meter.dataset.percent;
      progress.dataset.version = m.version;
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
    form._upload = null;
    var box = byId("upload-progress"), cancel = byId("upload-cancel"), rate = byId("upload-rate");
    if (box) { box.hidden = true; }
    if (cancel) { cancel.hidden = true; }
    if (rate) { rate.textContent = ""; }
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
    var cancel = byId("upload-cancel");
    if (cancel) { cancel.hidden = evt.detail.loaded >= evt.detail.total; }
    showUploadRate(evt.detail.elt, evt.detail.loaded, evt.detail.total);
  });
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (evt.detail.elt.id === "job-form" && !evt.defaultPrevented) {
      evt.detail.elt.querySelector("button[type=submit]").disabled = true;
    }
  });

  // -- times in the reader's own time zone ------------------------------------------------
  // The server writes <time datetime="...Z" data-local="clock|ago|date">16:46:00 UTC</time>;
  // here they become local ("17:46:00"), relative ("3 min ago", kept fresh) or a local
  // date, with the full local moment as their tooltip. Without JavaScript the UTC stays.
  var TIMES_FRESH_MS = 15000;

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function clockText(d) {
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function agoText(d) {
    var seconds = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
    if (seconds < 10) { return "just now"; }
    if (seconds < 60) { return seconds + " s ago"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min ago"; }
    if (seconds < 86400) { return Math.floor(seconds / 3600) + " h ago"; }
    return d.toLocaleDateString();
  }

  function localizeTime(el) {
    var d = new Date(el.getAttribute("datetime"));
    if (isNaN(d.getTime())) { return; }
    var style = el.dataset.local, text;
    if (style === "ago") {
      text = agoText(d);
    } else if (style === "date") {
      text = d.toLocaleDateString() + " " + clockText(d).slice(0, 5);
    } else {
      text = clockText(d);
    }
    if (el.textContent !== text) { el.textContent = text; }
    if (!el.dataset.localized) {
      el.title = d.toLocaleString();
      el.dataset.localized = "1";
    }
  }

  function localizeTimes(selector) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), localizeTime);
  }

  function watchTimes() {
    localizeTimes("time[data-local]");
    // New times arrive with every live update: show them local before the next paint.
    new MutationObserver(function () {
      localizeTimes("time[data-local]:not([data-localized])");
    }).observe(document.body, { childList: true, subtree: true });
    window.setInterval(function () { localizeTimes("time[data-local=ago]"); }, TIMES_FRESH_MS);
  }

  // -- the upload form: drop or pick, a list with Remove, limits checked before sending ---
  function sizeText(bytes) { // as the server's `filesize` filter: decimal units
    if (bytes < 1000) { return bytes + " B"; }
    var units = ["KB", "MB", "GB"], size = bytes, unit = "";
    for (var i = 0; i < units.length; i++) {
      size /= 1000; unit = units[i];
      if (size < 1000) { break; }
    }
    return size.toFixed(1) + " " + unit;
  }

  function leftText(seconds) {
    if (seconds < 60) { return Math.max(1, Math.ceil(seconds)) + " s left"; }
    return "about " + Math.round(seconds / 60) + " min left";
  }

  function fileForm() {
    var form = byId("job-form"), zone = byId("dropzone");
    return form && zone ? { form: form, zone: zone, input: zone.querySelector("input[type=file]") }
      : null;
  }

  function fileKey(f) { return [f.name, f.size, f.lastModified].join("/"); }

  function chosenFiles(parts) {
    if (!parts.form._chosen) { parts.form._chosen = []; }
    return parts.form._chosen;
  }

  function addFiles(parts, files) {
    var chosen = chosenFiles(parts), keys = chosen.map(fileKey);
    Array.prototype.forEach.call(files, function (f) {
      if (keys.indexOf(fileKey(f)) === -1) { chosen.push(f); keys.push(fileKey(f)); }
    });
    syncFiles(parts);
  }

  // The input holds exactly the listed files, so the form (htmx or not) sends those.
  function syncFiles(parts) {
    try {
      var transfer = new DataTransfer();
      chosenFiles(parts).forEach(function (f) { transfer.items.add(f); });
      parts.input.files = transfer.files;
    } catch (e) { /* no DataTransfer: the input keeps the browser's own choice */ }
    showFiles(parts);
  }

  function fileProblem(parts) {
    var chosen = chosenFiles(parts), data = parts.zone.dataset;
    var total = chosen.reduce(function (sum, f) { return sum + f.size; }, 0);
    var most = Number(data.maxFiles);
    if (chosen.length > most) {
      var extra = chosen.length - most;
      return "Too many files: " + chosen.length + " chosen, this form takes at most " + most +
        ". Remove " + extra + (extra === 1 ? " file." : " files.");
    }
    if (total > Number(data.maxBytes)) {
      return "Too large: the files add up to " + sizeText(total) + ", more than the " +
        data.maxLabel + " this form takes.";
    }
    return "";
  }

  function showFiles(parts) {
    var chosen = chosenFiles(parts), list = byId("file-list"), summary = byId("file-summary");
    var problem = byId("file-problem"), total = 0;
    list.textContent = "";
    chosen.forEach(function (f, i) {
      total += f.size;
      var li = document.createElement("li"), name = document.createElement("span");
      var size = document.createElement("span"), remove = document.createElement("button");
      name.className = "file-name"; name.textContent = f.name;
      size.className = "size"; size.textContent = sizeText(f.size);
      remove.type = "button"; remove.className = "remove-file"; remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove " + f.name);
      remove.addEventListener("click", function () {
        chosen.splice(i, 1);
        syncFiles(parts);
        var next = list.querySelectorAll(".remove-file")[Math.min(i, chosen.length - 1)];
        (next || parts.input).focus(); // the focus stays in the list, not on a removed button
      });
      li.append(name, " ", size, " ", remove);
      list.appendChild(li);
    });
    list.hidden = chosen.length === 0;
    summary.hidden = chosen.length === 0;
    summary.textContent = chosen.length + (chosen.length === 1 ? " file, " : " files, ") +
      sizeText(total) + " of at most " + parts.zone.dataset.maxFiles + " files, " +
      parts.zone.dataset.maxLabel + ".";
    var text = fileProblem(parts);
    problem.textContent = text;
    problem.hidden = !text;
  }

  function setupFileForm() {
    var parts = fileForm();
    if (!parts || !parts.input) { return; }
    byId("drop-hint").hidden = false;
    parts.zone.classList.add("dropzone-live");
    addFiles(parts, parts.input.files); // chosen before this script ran (back button)
    parts.input.addEventListener("change", function () { addFiles(parts, parts.input.files); });
    parts.zone.addEventListener("dragover", function (evt) {
      evt.preventDefault();
      parts.zone.classList.add("dragging");
    });
    parts.zone.addEventListener("dragleave", function () { parts.zone.classList.remove("dragging"); });
    parts.zone.addEventListener("drop", function (evt) {
      evt.preventDefault();
      parts.zone.classList.remove("dragging");
      if (evt.dataTransfer && evt.dataTransfer.files.length) { addFiles(parts, evt.dataTransfer.files); }
    });
    byId("upload-cancel").addEventListener("click", function () {
      htmx.trigger(parts.form, "htmx:abort");
    });
  }

  // The server may refuse anyway; these checks only spare a person a doomed upload.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var parts = fileForm();
    if (!parts || evt.detail.elt !== parts.form) { return; }
    var text = fileProblem(parts);
    if (text) {
      evt.preventDefault();
      var problem = byId("file-problem");
      problem.textContent = text;
      problem.hidden = false;
      return;
    }
    parts.form._upload = { started: performance.now(), samples: [] };
  }, true);

  document.addEventListener("htmx:sendAbort", function (evt) {
    var form = evt.detail.elt, feedback = byId("form-feedback");
    if (form.id !== "job-form" || !feedback) { return; }
    formDone(form);
    feedback.innerHTML = "";
    var p = document.createElement("p");
    p.className = "form-note";
    p.id = "form-error";
    p.setAttribute("role", "status");
    p.textContent = "Upload cancelled: nothing was started. Your files are still chosen.";
    feedback.appendChild(p);
  });

  // Upload speed and time left, over the last few seconds.
  function showUploadRate(form, loaded, total) {
    var upload = form._upload, out = byId("upload-rate");
    if (!upload || !out) { return; }
    var now = performance.now();
    upload.samples.push([now, loaded]);
    while (upload.samples.length > 2 && now - upload.samples[0][0] > 3000) { upload.samples.shift(); }
    var first = upload.samples[0], seconds = (now - first[0]) / 1000;
    if (seconds < 0.5) { return; }
    var rate = (loaded - first[1]) / seconds;
    if (rate <= 0) { out.textContent = "stalled"; return; }
    out.textContent = sizeText(rate) + "/s · " + leftText((total - loaded) / rate);
  }

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
    watchTimes();
    setupNotify();
    setupFileForm();
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

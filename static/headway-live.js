/* Headway's one live connection per browser: the hub.

   Browsers allow six HTTP/1.1 connections per host for all tabs together, so the tabs share
   one stream. The hub holds one EventSource to /live for the union of what the visible
   tabs show (their jobs, and the job list's rows and notices), and hands each message to
   the tabs that want it. It runs in a SharedWorker (this file, loaded as one); where there
   is none, headway.js runs it in one tab, elected with the Web Locks API, and relays over
   a BroadcastChannel; where neither exists, each page runs its own.

   State, not events: a message is a job's newest state, so a tab that was hidden (and
   unsubscribed) catches up from the newest message the hub holds, or from the stream it
   reopens with the versions it has; nothing is replayed. Plain JavaScript, no build. */
(function (scope) {
  "use strict";

  var FIRST_RETRY_MS = 1000;
  var MAX_RETRY_MS = 30000;
  var FAILURES_BEFORE_POLLING = 3; // the tabs poll for themselves meanwhile
  var CLIENT_TTL_MS = 45000; // a tab silent this long is gone (tabs say hello every 15 s)
  var SETTLE_MS = 30; // subscription changes that come together make one reconnect

  function Hub(url) {
    this.url = url;
    this.clients = {}; // tab id -> {send, jobs: {job id: version or null}, rows, visible, seen}
    this.versions = {}; // job id -> newest version this hub has had
    this.latest = {}; // job id -> newest message about it
    this.source = null;
    this.query = null; // what the open stream asked for
    this.state = "connecting";
    this.failures = 0;
    this.timer = null;
  }

  /* A tab says what it shows (on load, on every change, and every 15 s). */
  Hub.prototype.hello = function (id, send, m) {
    var client = this.clients[id] || (this.clients[id] = { send: send });
    client.jobs = m.jobs || {};
    client.rows = !!m.rows;
    client.visible = m.visible !== false;
    client.seen = Date.now();
    send({ type: "state", state: this.state });
    if (client.visible) {
      for (var job in client.jobs) {
        var latest = this.latest[job];
        if (latest && (client.jobs[job] === null || latest.version > client.jobs[job])) {
          send(latest); // at once, from what the hub holds
        }
      }
    }
    this.settle();
  };

  Hub.prototype.bye = function (id) {
    delete this.clients[id];
    this.settle();
  };

  Hub.prototype.settle = function () {
    var hub = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { hub.reconcile(); }, SETTLE_MS);
  };

  /* The stream this browser needs now: the visible tabs' jobs (each from the newest version
     known) and rows if any visible tab lists jobs; none at all while every tab is hidden. */
  Hub.prototype.wanted = function () {
    var have = {}, rows = false, now = Date.now();
    for (var id in this.clients) {
      var client = this.clients[id];
      if (now - client.seen > CLIENT_TTL_MS) { delete this.clients[id]; continue; }
      if (!client.visible) { continue; }
      rows = rows || client.rows;
      for (var job in client.jobs) {
        // From the oldest version a tab has (null: a tab has none, so send it whole).
        var version = client.jobs[job];
        if (!(job in have)) {
          have[job] = version;
        } else if (have[job] !== null) {
          have[job] = version === null ? null : Math.min(have[job], version);
        }
      }
    }
    var versions = this.versions;
    var parts = Object.keys(have).sort().map(function (job) {
      var from = job in versions ? versions[job] : have[job]; // the hub has caught tabs up
      return "job=" + job + (from === null ? "" : ":" + from);
    });
    if (rows) { parts.push("rows=1"); }
    return parts.length ? this.url + "?" + parts.join("&") : null;
  };

  Hub.prototype.reconcile = function () {
    var query = this.wanted();
    if (query === this.query && (this.source || this.retry)) { return; }
    this.close();
    this.query = query;
    if (query === null) { return; } // every tab hidden: no stream at all
    this.open(query);
  };

  Hub.prototype.close = function () {
    clearTimeout(this.retry);
    this.retry = null;
    if (this.source) { this.source.close(); this.source = null; }
  };

  Hub.prototype.open = function (query) {
    var hub = this;
    var source = new EventSource(query);
    this.source = source;
    source.onopen = function () {
      hub.failures = 0;
      hub.setState("live");
    };
    source.addEventListener("job", function (e) {
      var m = addressed(e.data, "job");
      m.final = m.head[2] === "1";
      hub.versions[m.job] = m.version;
      hub.latest[m.job] = m;
      hub.deliver(m, function (client) { return m.job in client.jobs; });
    });
    source.addEventListener("row", function (e) {
      var m = addressed(e.data, "row");
      hub.deliver(m, function (client) { return client.rows; });
    });
    source.addEventListener("notice", function (e) {
      var m = { type: "notice", html: e.data };
      hub.deliver(m, function (client) { return client.rows; });
    });
    // The hub reconnects by itself, with jitter, asking for the versions it has (so no
    // Last-Event-ID is needed), after a failure and when the server ends a stream.
    source.onerror = function () {
      source.close();
      if (hub.source !== source) { return; }
      hub.source = null;
      hub.failures += 1;
      hub.setState(hub.failures >= FAILURES_BEFORE_POLLING ? "polling" : "reconnecting");
      var delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * Math.pow(2, hub.failures - 1));
      hub.retry = setTimeout(function () {
        hub.retry = null;
        hub.query = null;
        hub.reconcile();
      }, delay * (0.5 + Math.random()));
    };
  };

  Hub.prototype.deliver = function (m, wants) {
    for (var id in this.clients) {
      var client = this.clients[id];
      if (client.visible && wants(client)) { client.send(m); }
    }
  };

  Hub.prototype.setState = function (state) {
    this.state = state;
    for (var id in this.clients) { this.clients[id].send({ type: "state", state: state }); }
  };

  /* "<job id> <version> ..." on the first line, the fragment after it. */
  function addressed(data, type) {
    var cut = data.indexOf("\n");
    var head = data.slice(0, cut).split(" ");
    return { type: type, job: head[0], version: Number(head[1]), head: head, html: data.slice(cut + 1) };
  }

  if (typeof SharedWorkerGlobalScope !== "undefined" && scope instanceof SharedWorkerGlobalScope) {
    var hub = null;
    scope.onconnect = function (event) {
      var port = event.ports[0];
      var id = null;
      port.onmessage = function (e) {
        var m = e.data;
        id = m.tab;
        hub = hub || new Hub(m.url);
        if (m.type === "bye") { hub.bye(id); } else { hub.hello(id, function (out) { port.postMessage(out); }, m); }
      };
      port.start();
    };
  } else {
    scope.HeadwayHub = Hub;
  }
})(self);

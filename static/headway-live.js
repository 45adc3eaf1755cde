/* Headway's one live connection per browser: the hub.

   Browsers allow six HTTP/1.1 connections per host for all tabs together, so the tabs share
   one stream. The hub holds one EventSource to /live for the union of what the visible
   tabs show (their jobs, and the job list's rows and notices), and hands each message to
   the tabs that want it. It runs in a SharedWorker (this file, loaded as one); where there
   is none, headway.js runs it in one tab, elected with the Web Locks API, and relays over
   a BroadcastChannel; where neither exists, each page runs its own.

   State, not events: a job's message is its whole progress region, or the change from the
   version before (out-of-band swaps of the regions that changed). The hub knows which
   version each tab shows, so each tab gets what it can apply; a tab that cannot (it was
   hidden, or just loaded) makes the hub reopen the stream from that tab's version, and the
   server answers with the whole state. Nothing is replayed. Plain JavaScript, no build. */
(function (scope) {
  "use strict";

  var FIRST_RETRY_MS = 1000;
  var MAX_RETRY_MS = 30000;
  var FAILURES_BEFORE_POLLING = 2; // the tabs poll for themselves meanwhile
  var CLIENT_TTL_MS = 45000; // a tab silent this long is gone (tabs say hello every 15 s)
  var SETTLE_MS = 30; // subscription changes that come together make one reconnect

  function Hub(url) {
    this.url = url;
    this.clients = {}; // tab id -> {send, jobs: {job id: version or null}, rows, visible, seen}
    this.versions = {}; // job id -> newest version this hub has had
    this.latest = {}; // job id -> newest message about it
    this.source = null;
    this.key = null; // which jobs (and rows) the open stream carries
    this.resync = false; // a tab is behind what the stream can bring it: reopen
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
        if (latest && applies(latest, client)) {
          this.send(client, latest); // at once, from what the hub holds
        } else if (job in this.versions && !(client.jobs[job] >= this.versions[job])) {
          this.resync = true; // behind, and nothing here to catch up with
        }
      }
    }
    this.settle();
  };

  /* Whether a tab showing version `have` of the job can take this message. */
  function applies(m, client) {
    var have = client.jobs[m.job];
    if (have === undefined) { return false; }
    if (m.base === null) { return have === null || m.version > have; }
    return m.base === have;
  }

  Hub.prototype.send = function (client, m) {
    if (m.type === "job") { client.jobs[m.job] = m.version; }
    client.send(m);
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

  /* The stream this browser needs now: the visible tabs' jobs, each from the oldest version
     a tab shows (none: a tab has none, so send it whole), and rows if any visible tab lists
     jobs; no stream at all while every tab is hidden. */
  Hub.prototype.wanted = function () {
    var have = {}, rows = false, now = Date.now();
    for (var id in this.clients) {
      var client = this.clients[id];
      if (now - client.seen > CLIENT_TTL_MS) { delete this.clients[id]; continue; }
      if (!client.visible) { continue; }
      rows = rows || client.rows;
      for (var job in client.jobs) {
        var version = client.jobs[job];
        if (!(job in have)) {
          have[job] = version;
        } else if (have[job] !== null) {
          have[job] = version === null ? null : Math.min(have[job], version);
        }
      }
    }
    var jobs = Object.keys(have).sort();
    var parts = jobs.map(function (job) {
      return "job=" + job + (have[job] === null ? "" : ":" + have[job]);
    });
    if (rows) { parts.push("rows=1"); }
    return { key: jobs.join(",") + (rows ? "+rows" : ""), url: parts.length ? this.url + "?" + parts.join("&") : null };
  };

  Hub.prototype.reconcile = function () {
    var want = this.wanted();
    if (want.key === this.key && !this.resync && (this.source || this.retry)) { return; }
    this.close();
    this.key = want.key;
    this.resync = false;
    if (want.url !== null) { this.open(want.url); } // none while every tab is hidden
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
      m.base = m.head[3] === "-" ? null : Number(m.head[3]);
      hub.versions[m.job] = m.version;
      hub.latest[m.job] = m;
      for (var id in hub.clients) {
        var client = hub.clients[id];
        if (!client.visible || !(m.job in client.jobs)) { continue; }
        if (applies(m, client)) {
          hub.send(client, m);
        } else if (client.jobs[m.job] === null || client.jobs[m.job] < m.version) {
          hub.resync = true; // this tab missed the version the change starts from
          hub.settle();
        }
      }
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
        hub.key = null;
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

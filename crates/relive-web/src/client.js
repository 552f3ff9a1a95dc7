// relive live reload client. Served at /livereload.js; injected into pages
// as <script src="/livereload.js" async></script>.
//
// Speaks LiveReload official-7 over a WebSocket at /livereload, falling back
// to Server-Sent Events at /livereload/events. A `reload` with liveCSS swaps
// the matching stylesheets in place (the page and its JS state stay); any
// other reload reloads the page. An `alert` shows an overlay until the next
// reload; so does a page that failed to render (the server puts the error in
// #relive-page-error). A page stamped with the server's change count
// (data-relive-changes on its script tag) sends it on connecting, so that
// the server can reload a page that missed changes while it loaded.
// Reconnects with exponential backoff.
// `window.__reliveConnected` tells whether it is connected (set once the
// server has said hello).
(function () {
  "use strict";
  if (window.__relive) return;
  window.__relive = true;

  var PROTOCOL = "http://livereload.com/protocols/official-7";
  var OVERLAY_ID = "relive-error-overlay";
  var PAGE_ERROR_ID = "relive-page-error";
  var script = document.currentScript;
  var origin = script && script.src ? new URL(script.src, location.href) : location;
  // How many changes the server had taken in when it rendered this page
  // (relive serve stamps the tag): it reloads a page that missed some.
  var pageChanges = script && script.getAttribute ? script.getAttribute("data-relive-changes") : null;
  var backoff = 250;
  var wsFailures = 0;

  function retry(connect) {
    var delay = backoff;
    backoff = Math.min(backoff * 2, 10000);
    setTimeout(connect, delay);
  }

  // A fingerprinted name (app.3f2a9c1b.css) stands for its logical one.
  function logical(path) {
    return path.split("?")[0].split("#")[0].replace(/\.[0-9a-f]{8}(\.[^.\/]+)$/, "$1");
  }

  function fileName(path) {
    var parts = logical(path).split("/");
    return parts[parts.length - 1];
  }

  function swap(link) {
    var url = new URL(link.href, location.href);
    url.pathname = logical(url.pathname);
    url.searchParams.set("livereload", String(Date.now()));
    var next = link.cloneNode(false);
    next.href = url.toString();
    // Keep the old sheet until the new one is in, so nothing flashes.
    next.addEventListener("load", function () { link.remove(); });
    next.addEventListener("error", function () { link.remove(); });
    link.parentNode.insertBefore(next, link.nextSibling);
  }

  function reloadCss(path) {
    var links = Array.prototype.slice.call(document.querySelectorAll('link[rel~="stylesheet"][href]'));
    var name = fileName(path);
    var matching = links.filter(function (l) {
      return fileName(new URL(l.href, location.href).pathname) === name;
    });
    // `*.css` (several changed) or a sheet this page does not link
    // directly (an @import): swap them all.
    (matching.length ? matching : links).forEach(swap);
  }

  function clearOverlay() {
    var overlay = document.getElementById(OVERLAY_ID);
    if (overlay) overlay.remove();
  }

  function showOverlay(message) {
    clearOverlay();
    var overlay = document.createElement("div");
    overlay.id = OVERLAY_ID;
    overlay.setAttribute("role", "alert");
    overlay.style.cssText =
      "position:fixed;inset:0;z-index:2147483647;background:rgba(20,0,0,.92);color:#fdd;" +
      "font:14px/1.5 ui-monospace,monospace;padding:2em;white-space:pre-wrap;overflow:auto";
    var title = document.createElement("strong");
    title.textContent = "relive\n\n";
    overlay.appendChild(title);
    overlay.appendChild(document.createTextNode(message));
    (document.body || document.documentElement).appendChild(overlay);
  }

  function parse(text) {
    try { return JSON.parse(text) || {}; } catch (e) { return {}; }
  }

  function handle(message) {
    if (message.command === "reload") {
      clearOverlay();
      if (message.liveCSS && /\.css$/i.test(message.path)) reloadCss(message.path);
      else location.reload();
    } else if (message.command === "alert") {
      showOverlay(String(message.message));
    }
  }

  function connectEvents() {
    var url = new URL("/livereload/events", origin);
    if (pageChanges !== null) url.searchParams.set("changes", pageChanges);
    var source = new EventSource(url.toString());
    source.onopen = function () {
      backoff = 250;
      window.__reliveConnected = true;
    };
    source.onmessage = function (event) { handle(parse(event.data)); };
    source.onerror = function () {
      window.__reliveConnected = false;
      source.close();
      retry(connectEvents);
    };
  }

  function connect() {
    if (!window.WebSocket || wsFailures >= 3) return connectEvents();
    var url = new URL("/livereload", origin);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    var socket = new WebSocket(url.toString());
    var opened = false;
    socket.onopen = function () {
      opened = true;
      var hello = { command: "hello", protocols: [PROTOCOL] };
      if (pageChanges !== null) hello.reliveChanges = Number(pageChanges);
      socket.send(JSON.stringify(hello));
    };
    socket.onmessage = function (event) {
      var message = parse(String(event.data));
      if (message.command === "hello") {
        backoff = 250;
        wsFailures = 0;
        window.__reliveConnected = true;
        socket.send(JSON.stringify({ command: "info", plugins: {}, url: location.href }));
        return;
      }
      handle(message);
    };
    socket.onclose = function () {
      window.__reliveConnected = false;
      if (!opened) wsFailures += 1;
      retry(connect);
    };
  }

  var pageError = document.getElementById(PAGE_ERROR_ID);
  if (pageError) showOverlay(pageError.textContent);

  connect();
})();

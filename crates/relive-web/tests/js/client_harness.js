// Runs the live reload client (path in argv[2]) against a stub DOM,
// WebSocket and EventSource, and checks what it does with each message.
// Exits non-zero on the first failed check. Run by tests/client_js.rs.
"use strict";
const vm = require("vm");
const fs = require("fs");
const assert = require("assert");

const source = fs.readFileSync(process.argv[2], "utf8");

class El {
  constructor(tag) {
    this.tagName = tag;
    this.children = [];
    this.attrs = {};
    this.style = {};
    this.listeners = {};
    this.parentNode = null;
    this.id = "";
    this.textContent = "";
  }
  setAttribute(k, v) { this.attrs[k] = v; }
  appendChild(c) { c.parentNode = this; this.children.push(c); return c; }
  insertBefore(n, ref) {
    n.parentNode = this;
    const i = ref ? this.children.indexOf(ref) : -1;
    if (i < 0) this.children.push(n); else this.children.splice(i, 0, n);
    return n;
  }
  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.children;
    siblings.splice(siblings.indexOf(this), 1);
    this.parentNode = null;
  }
  cloneNode() { const c = new El(this.tagName); c.rel = this.rel; c.href = this.href; return c; }
  addEventListener(type, f) { this.listeners[type] = f; }
  get nextSibling() {
    if (!this.parentNode) return null;
    const siblings = this.parentNode.children;
    return siblings[siblings.indexOf(this) + 1] || null;
  }
}

function all(el) { return [el].concat(...el.children.filter((c) => c instanceof El).map(all)); }

function page(hrefs) {
  const head = new El("head");
  const body = new El("body");
  for (const href of hrefs) {
    const link = new El("link");
    link.rel = "stylesheet";
    link.href = href;
    head.appendChild(link);
  }
  const env = { timers: [], sockets: [], sources: [], reloads: 0, head, body };
  const document = {
    currentScript: { src: "http://127.0.0.1:7878/livereload.js" },
    body,
    documentElement: body,
    createElement: (t) => new El(t),
    createTextNode: (t) => ({ textContent: t }),
    getElementById: (id) => all(head).concat(all(body)).find((e) => e.id === id) || null,
    querySelectorAll: () => all(head).filter((e) => e.tagName === "link" && /stylesheet/.test(e.rel) && e.href),
  };
  const location = { href: "http://127.0.0.1:7878/page", protocol: "http:", reload() { env.reloads += 1; } };
  class WebSocket {
    constructor(url) { this.url = url; this.sent = []; env.sockets.push(this); }
    send(d) { this.sent.push(JSON.parse(d)); }
  }
  class EventSource {
    constructor(url) { this.url = url; env.sources.push(this); }
    close() { this.closed = true; }
  }
  const context = { document, location, WebSocket, EventSource, URL, JSON, Math, String, Date, Array };
  context.setTimeout = (f, d) => env.timers.push({ f, d });
  context.window = context;
  vm.createContext(context);
  env.run = () => vm.runInContext(source, context);
  env.run();
  env.links = () => env.head.children.map((l) => l.href);
  env.overlay = () => document.getElementById("relive-error-overlay");
  return env;
}

function send(socket, message) { socket.onmessage({ data: JSON.stringify(message) }); }

// Handshake: official-7 hello on open, info after the server's hello.
{
  const env = page([]);
  env.run(); // a second copy of the script does nothing
  assert.strictEqual(env.sockets.length, 1);
  const ws = env.sockets[0];
  assert.strictEqual(ws.url, "ws://127.0.0.1:7878/livereload");
  ws.onopen();
  assert.deepStrictEqual(ws.sent[0], { command: "hello", protocols: ["http://livereload.com/protocols/official-7"] });
  send(ws, { command: "hello", protocols: ["http://livereload.com/protocols/official-7"], serverName: "relive" });
  assert.strictEqual(ws.sent[1].command, "info");
  assert.strictEqual(env.reloads, 0);
}

// liveCSS: the matching sheet (even fingerprinted) is swapped, nothing reloads.
{
  const env = page(["http://127.0.0.1:7878/static/app.3f2a9c1b.css", "http://127.0.0.1:7878/static/other.css"]);
  const ws = env.sockets[0];
  ws.onopen();
  send(ws, { command: "reload", path: "/static/app.css", liveCSS: true, liveImg: false });
  assert.strictEqual(env.reloads, 0, "a CSS change must not reload the page");
  const links = env.links();
  assert.strictEqual(links.length, 3, links.join(" "));
  assert.match(links[1], /^http:\/\/127\.0\.0\.1:7878\/static\/app\.css\?livereload=\d+$/);
  assert.strictEqual(links[2], "http://127.0.0.1:7878/static/other.css");
  env.head.children[1].listeners.load();
  assert.deepStrictEqual(env.links().length, 2, "the old sheet goes once the new one loaded");
  assert.match(env.links()[0], /app\.css\?livereload=/);

  // Several sheets at once: all are swapped.
  send(ws, { command: "reload", path: "*.css", liveCSS: true, liveImg: false });
  assert.strictEqual(env.reloads, 0);
  assert.strictEqual(env.links().length, 4);
  assert.match(env.links()[3], /other\.css\?livereload=/);

  // Anything else reloads the page.
  send(ws, { command: "reload", path: "templates/index.html", liveCSS: false, liveImg: false });
  assert.strictEqual(env.reloads, 1);
  send(ws, { command: "reload", path: "/static/logo.png", liveCSS: true, liveImg: false });
  assert.strictEqual(env.reloads, 2, "liveCSS on a path that is not CSS reloads");
}

// alert: an overlay with the message, until the next reload.
{
  const env = page(["/static/app.css"]);
  const ws = env.sockets[0];
  ws.onopen();
  send(ws, { command: "alert", message: "templates/index.html:2:5: syntax error: <b>x</b>" });
  const overlay = env.overlay();
  assert.ok(overlay, "an overlay is shown");
  assert.strictEqual(overlay.children[1].textContent, "templates/index.html:2:5: syntax error: <b>x</b>");
  send(ws, { command: "alert", message: "second" });
  assert.strictEqual(env.body.children.length, 1, "one overlay at a time");
  send(ws, { command: "reload", path: "/static/app.css", liveCSS: true });
  assert.strictEqual(env.overlay(), null, "a reload clears it");
  assert.strictEqual(env.reloads, 0);
}

// Reconnects with growing delays; after three sockets that never opened,
// Server-Sent Events, which carry the same messages.
{
  const env = page([]);
  for (let i = 0; i < 3; i++) {
    env.sockets[i].onclose();
    assert.strictEqual(env.timers.length, i + 1);
    env.timers[i].f();
  }
  assert.deepStrictEqual(env.timers.map((t) => t.d), [250, 500, 1000]);
  assert.strictEqual(env.sockets.length, 3);
  assert.strictEqual(env.sources.length, 1);
  const es = env.sources[0];
  assert.strictEqual(es.url, "http://127.0.0.1:7878/livereload/events");
  es.onopen();
  es.onmessage({ data: JSON.stringify({ command: "reload", path: "config/site", liveCSS: false }) });
  assert.strictEqual(env.reloads, 1);
  es.onerror();
  assert.ok(es.closed);
  assert.strictEqual(env.timers[3].d, 250, "an open connection resets the backoff");
  env.timers[3].f();
  assert.strictEqual(env.sources.length, 2);
}

// A socket that opened and then dropped reconnects over WebSocket.
{
  const env = page([]);
  const ws = env.sockets[0];
  ws.onopen();
  send(ws, { command: "hello", protocols: ["http://livereload.com/protocols/official-7"] });
  ws.onclose();
  env.timers[0].f();
  assert.strictEqual(env.sockets.length, 2);
  assert.strictEqual(env.sources.length, 0);
}

console.log("client ok");

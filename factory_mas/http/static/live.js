// A WebSocket that reconnects with exponential backoff (1 s doubling to 30 s) and shows
// its state in #conn-status. The key goes in the first message, never in the URL.

import { getKey, requestAuth } from "./api.js";

const MIN_DELAY = 1000;
const MAX_DELAY = 30000;

export class LiveSocket {
  constructor(path, onFrame) {
    this.path = path;
    this.onFrame = onFrame;
    this.delay = MIN_DELAY;
    this.ws = null;
    this.retryTimer = 0;
    this.countdown = 0;
    this.everOpen = false;
    this.badge = document.getElementById("conn-status");
  }

  get live() {
    return this.badge.dataset.state === "live";
  }

  start() {
    clearTimeout(this.retryTimer);
    clearInterval(this.countdown);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${this.path}`);
    this.ws = ws;
    ws.onopen = () => {
      const key = getKey();
      if (key) ws.send(JSON.stringify({ auth: key }));
      this.everOpen = true;
      this.setState("live", "live");
    };
    ws.onmessage = (ev) => {
      // Only a frame proves the server took us (auth included): reset the backoff here.
      this.delay = MIN_DELAY;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return; // replaced by restart()
      if (ev.code === 4401 || ev.code === 4403) requestAuth();
      this.scheduleRetry();
    };
  }

  /** Reconnect now (after a new key was saved). */
  restart() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close();
    this.delay = MIN_DELAY;
    this.start();
  }

  scheduleRetry() {
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, MAX_DELAY);
    let left = Math.ceil(delay / 1000);
    const show = () =>
      this.everOpen
        ? this.setState("reconnecting", `reconnecting in ${left} s`)
        : this.setState("offline", "offline");
    show();
    this.countdown = setInterval(() => {
      left = Math.max(0, left - 1);
      show();
    }, 1000);
    this.retryTimer = setTimeout(() => this.start(), delay);
  }

  setState(state, text) {
    this.badge.dataset.state = state;
    this.badge.textContent = text;
  }
}

/* The page's two doors to the public API, with the session cookie like any other client:
 * GraphQL queries and mutations over fetch (with X-CSRFToken), and the uploadProgress subscription
 * over one graphql-transport-ws socket that reconnects by itself.
 */

export class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export function csrfToken() {
  // Read at each request: logging in again (in another tab too) rotates the cookie.
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** The contract's error (`{"errors": [{message, extensions: {code}}]}`), or one naming the status. */
export function errorOf(body, status) {
  const first = body && Array.isArray(body.errors) ? body.errors[0] : null;
  if (first) return new ApiError((first.extensions && first.extensions.code) || "ERROR", first.message);
  return new ApiError(`HTTP_${status}`, `the server answered HTTP ${status}`);
}

/** GraphQL over HTTP; `onUnauthenticated` is told when the session has ended. */
export function graphqlClient(path, onUnauthenticated) {
  return async function graphql(query, variables) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ query, variables }),
      });
    } catch {
      throw new ApiError("NETWORK", "the server cannot be reached");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || body.errors) {
      const error = errorOf(body, response.status);
      if (error.code === "UNAUTHENTICATED") onUnauthenticated();
      throw error;
    }
    return body.data;
  };
}

/**
 * One websocket for every subscription on the page, opened when the first one starts.
 *
 * On a close that is not a refusal of the session (4403), it reconnects with exponential backoff
 * and jitter (0.5 s doubling to 5 s) and subscribes again to every subscription still open; each
 * answers first with a snapshot, which brings its bar up to date. `events.state(name)` hears
 * "live", "reconnecting" and "idle"; `events.refused()` the end of the session.
 */
export class ProgressSocket {
  constructor(url, query, events) {
    this.url = url;
    this.query = query;
    this.events = events;
    this.subscriptions = new Map();
    this.nextId = 1;
    this.ws = null;
    this.acked = false;
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
  }

  subscribe(variables, handlers) {
    const id = String(this.nextId++);
    const subscription = { id, payload: { query: this.query, variables }, handlers };
    this.subscriptions.set(id, subscription);
    if (this.acked) this.send({ id, type: "subscribe", payload: subscription.payload });
    else this.connect();
    return () => {
      if (this.subscriptions.delete(id) && this.acked) this.send({ id, type: "complete" });
    };
  }

  connect() {
    if (this.ws || this.timer || this.stopped) return;
    const ws = new WebSocket(this.url, "graphql-transport-ws");
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "connection_init", payload: {} }));
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => this.closed(event.code);
  }

  /** Reconnect now rather than after the backoff (the browser says it is online again). */
  hurry() {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
      this.connect();
    }
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  receive(message) {
    const subscription = message.id === undefined ? null : this.subscriptions.get(message.id);
    switch (message.type) {
      case "connection_ack":
        this.acked = true;
        this.failures = 0;
        this.events.state("live");
        for (const each of this.subscriptions.values()) {
          this.send({ id: each.id, type: "subscribe", payload: each.payload });
        }
        break;
      case "ping":
        this.send({ type: "pong" });
        break;
      case "next":
        if (!subscription) break;
        if (message.payload.errors) {
          this.subscriptions.delete(message.id);
          subscription.handlers.error(errorOf(message.payload));
        } else {
          subscription.handlers.next(message.payload.data.uploadProgress);
        }
        break;
      case "error":
        if (!subscription) break;
        this.subscriptions.delete(message.id);
        subscription.handlers.error(errorOf({ errors: message.payload }));
        break;
      case "complete":
        if (!subscription) break;
        this.subscriptions.delete(message.id);
        subscription.handlers.complete();
        break;
      default:
        break;
    }
  }

  closed(code) {
    this.ws = null;
    this.acked = false;
    if (code === 4403) {
      this.stopped = true;
      this.events.refused();
      return;
    }
    if (this.subscriptions.size === 0) {
      this.events.state("idle");
      return;
    }
    const delay = Math.min(5000, 500 * 2 ** this.failures) * (0.5 + Math.random() / 2);
    this.failures += 1;
    this.events.state("reconnecting");
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }
}

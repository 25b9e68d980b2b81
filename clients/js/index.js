// mioket-client: a client for mioket's `mioket.v1` subprotocol (docs/protocol.md).
// An ES module without dependencies or build step, for browsers and Node.
//
// One Mioket keeps one WebSocket open: it reconnects with full-jitter backoff, joins its
// rooms again after every (re)connect with the `since`/`epoch` of the last message it
// delivered, delivers every message once in seq order, tells gaps the server cannot fill,
// matches acks to publishes, notices a dead link with an application-level heartbeat, and
// gets and refreshes a token when given `getToken`.

const CONNECT_CODES_TERMINAL = new Set([4401, 4403, 4410]);
const CODE_TOKEN_EXPIRED = 4001;

/** Thrown by an application's getToken to say "no token will ever come": the client stops. */
export class Unauthorized extends Error {
  constructor(message = 'unauthorized') {
    super(message);
    this.name = 'Unauthorized';
  }
}

/**
 * A publish that failed: `reason` is the server's error reason, 'timeout' or 'disconnected';
 * `id` is the publish's id: publishing again with it (`publish(data, {id})`) is safe.
 */
export class PublishError extends Error {
  constructor(reason, message = reason, id = null) {
    super(message);
    this.name = 'PublishError';
    this.reason = reason;
    this.id = id;
  }
}

/** The longest publish id the server takes (bytes of UTF-8). */
const MAX_ID = 64;

class Emitter {
  #handlers = new Map();
  /** Adds a handler; returns a function that removes it. */
  on(event, handler) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }
  off(event, handler) {
    this.#handlers.get(event)?.delete(handler);
  }
  once(event, handler) {
    const off = this.on(event, (...args) => {
      off();
      handler(...args);
    });
    return off;
  }
  emit(event, ...args) {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (e) {
        // An application handler's exception must not break the client's bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

function decodeBase64(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function encodeBase64(bytes) {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** The room a URL's path names (docs/protocol.md, Rooms by path). */
export function roomOfUrl(url) {
  return decodeURIComponent(new URL(url).pathname.slice(1));
}

/**
 * A room of a Mioket client. Events: `message` ({room, epoch, seq, data, from?}), `joined`
 * (every welcome: {..., user?, readOnly?}), `recovered` (every welcome of a resume: {recovered: boolean}), `gap`
 * (messages may have been missed), `presence` ({room, online}), `left` ({room, reason?}: reason
 * `forbidden` or `removed` when the server took the room away; not rejoined), `error` (a join
 * the server refused: {reason}).
 */
export class Room extends Emitter {
  #client;
  /** The room's name. */
  name;
  /** Epoch of the last delivered message (null before the first welcome). */
  epoch = null;
  /** Seq of the last delivered message in `epoch` (0: none). */
  seq = 0;
  /** Members online as last told by the server (null before the first welcome). */
  online = null;
  /** True between this connection's welcome for the room and its end. */
  joined = false;
  /** True when the last welcome said this connection may not publish here (`read_only`). */
  readOnly = false;
  /** False once leave() was called. */
  active = true;
  #queued = []; // publishes waiting for the room to be joined

  constructor(client, name) {
    super();
    this.#client = client;
    this.name = name;
  }

  /**
   * Publishes a string (text) or bytes (Uint8Array/ArrayBuffer: binary). Resolves with
   * {seq} on the server's ack; rejects with a PublishError on the server's error, on the
   * timeout, or when the connection drops after the publish was sent and before its ack.
   * A publish made while the room is not joined waits (within the timeout) until it is.
   * Every publish has an id, unique across connections (this client's random prefix and a
   * counter), or `id` (1 to 64 bytes) to retry one: the server publishes an id once per
   * room within its --dedup-window and answers a repeat with the first publish's seq.
   */
  publish(data, { timeout, id } = {}) {
    if (!this.active) return Promise.reject(new PublishError('left', 'the room was left', id ?? null));
    if (id !== undefined && !validId(id)) {
      return Promise.reject(new TypeError(`a publish id is a string of 1 to ${MAX_ID} bytes`));
    }
    const op = { op: 'publish', room: this.name };
    if (id !== undefined) op.id = id;
    if (typeof data === 'string') op.data = data;
    else if (data instanceof ArrayBuffer) op.b64 = encodeBase64(new Uint8Array(data));
    else if (ArrayBuffer.isView(data)) op.b64 = encodeBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    else return Promise.reject(new TypeError('publish takes a string, an ArrayBuffer or a typed array'));
    return this.#client._publish(this, op, timeout);
  }

  /**
   * Asks the server who is in the room (the `presence` op). Resolves with
   * {room, online, users: [{user, info?, connections}], truncated?}; rejects with a
   * PublishError on the server's error (e.g. `forbidden`), on the timeout, on a disconnect
   * before the answer, or when the room is left. Waits (within the timeout) for the join.
   */
  presence({ timeout } = {}) {
    if (!this.active) return Promise.reject(new PublishError('left', 'the room was left'));
    return this.#client._publish(this, { op: 'presence', room: this.name }, timeout);
  }

  /** Leaves the room: no more messages, pending publishes rejected, `left` emitted. */
  leave() {
    if (!this.active) return;
    this.#client._leave(this);
  }

  // --- used by the client -------------------------------------------------------------

  _takeQueued() {
    const q = this.#queued;
    this.#queued = [];
    return q;
  }
  _queue(entry) {
    this.#queued.push(entry);
  }
  _hasQueued(id) {
    return this.#queued.some((entry) => entry.op.id === id);
  }
  _unqueue(entry) {
    const i = this.#queued.indexOf(entry);
    if (i >= 0) this.#queued.splice(i, 1);
  }

  _welcome(w, asked) {
    const previous = { epoch: this.epoch, seq: this.seq };
    if (w.epoch !== this.epoch) {
      if (asked) this.emit('gap', { room: this.name, reason: 'epoch', ...previousOf(previous), epoch: w.epoch, seq: w.seq });
      this.epoch = w.epoch;
      this.seq = 0;
    } else if (asked && w.recovered === false) {
      this._gapTold = true;
      this.emit('gap', { room: this.name, reason: 'history', ...previousOf(previous), epoch: w.epoch, seq: w.seq });
    }
    this.online = w.online;
    this.joined = true;
    this.readOnly = w.read_only === true;
    const info = {
      room: this.name,
      epoch: w.epoch,
      seq: w.seq,
      online: w.online,
      text: w.text ?? null,
      recovered: asked ? w.recovered === true : undefined,
    };
    if (w.user !== undefined) info.user = w.user;
    if (this.readOnly) info.readOnly = true;
    if (asked) this.emit('recovered', { room: this.name, recovered: w.recovered === true, epoch: w.epoch, since: previous.seq });
    this.emit('joined', info);
  }

  _message(m) {
    if (m.seq <= this.seq) return; // already delivered (a replay after recovered:false)
    if (m.seq !== this.seq + 1 && this.seq !== 0 && !this._gapTold) {
      this.emit('gap', { room: this.name, reason: 'seq', previousEpoch: this.epoch, previousSeq: this.seq, epoch: this.epoch, seq: m.seq });
    }
    this._gapTold = false;
    this.seq = m.seq;
    const message = { room: this.name, epoch: this.epoch, seq: m.seq };
    if (typeof m.data === 'string') message.data = m.data;
    else if (typeof m.b64 === 'string') message.data = decodeBase64(m.b64);
    if (m.from !== undefined) message.from = m.from;
    this.emit('message', message);
  }
}

function previousOf(p) {
  return { previousEpoch: p.epoch, previousSeq: p.seq };
}

/**
 * A mioket.v1 client. `url` is ws:// or wss://; its path is a room the server joins at
 * once (docs/protocol.md): rooms are joined with `room(name)`, and the path's room is
 * left again unless the application asked for it.
 *
 * Options (times in seconds):
 * - WebSocket: the constructor (default globalThis.WebSocket; in Node 20, `ws`'s).
 * - getToken: async () => token, called before every connection and before the token's
 *   `expires_in` runs out (a refresh that gets the token in use sends nothing); throw
 *   Unauthorized to stop for good.
 * - tokenIn: 'protocol' (default: offered as subprotocol `mioket.token.TOKEN`, works in
 *   browsers) or 'header' (`Authorization: Bearer TOKEN`; needs a constructor that takes
 *   `{headers}` as its third argument, like `ws`).
 * - minDelay 0.5, maxDelay 20: the backoff bounds; stableAfter 10: a connection that lasted
 *   this long resets the backoff.
 * - heartbeat 10, heartbeatTimeout 5: ping after `heartbeat` without a frame, give the link
 *   up when still nothing came `heartbeatTimeout` later; heartbeat 0 turns it off.
 * - publishTimeout 10: how long a publish waits for its ack.
 * - refreshMargin 10: refresh the token this long before it expires (at most a third of
 *   its lifetime).
 * - random, setTimeout, clearTimeout: injected for tests (fake timers, fixed jitter).
 * - window: where `online`/`offline` events and navigator.onLine come from (default
 *   globalThis; nothing happens where there are none).
 *
 * Events: `state` (state, info), `connected`, `disconnected` ({code, reason}),
 * `reconnecting` ({attempt, delay, code, reason}: the next attempt in `delay` seconds),
 * `closed` ({code, reason}), `error` (errors the server sent that no op owns).
 */
export class Mioket extends Emitter {
  /** 'disconnected' | 'connecting' | 'connected' | 'closed' */
  state = 'disconnected';
  /** Why the client is closed, once it is: {code, reason}. */
  closeReason = null;
  /** The `user` of the last welcome (with a token), else null. */
  user = null;
  #url;
  #pathRoom;
  #o;
  #rooms = new Map();
  #ws = null;
  #joinedHere = new Set(); // rooms asked for on this connection
  #welcomed = false; // this connection had its first welcome
  #attempt = 0;
  #reconnectTimer = null;
  #stableTimer = null;
  #idleTimer = null;
  #deadTimer = null;
  #refreshTimer = null;
  #pending = new Map(); // publish id -> entry
  #nextId = 1;
  // Publish ids are `p-PREFIX-N`: the prefix random per client, so that ids are unique across
  // connections (the server publishes an id once per room, whoever sends it).
  #idPrefix = randomPrefix();
  #token = null;
  #wantConnected = false;
  #offline = false;
  #removeWindowListeners = null;
  #expiredInARow = 0; // 4001 closes without a stable connection between them

  constructor(url, options = {}) {
    super();
    this.#url = url;
    this.#pathRoom = roomOfUrl(url);
    const g = globalThis;
    this.#o = {
      WebSocket: options.WebSocket ?? g.WebSocket,
      getToken: options.getToken ?? null,
      tokenIn: options.tokenIn ?? 'protocol',
      minDelay: options.minDelay ?? 0.5,
      maxDelay: options.maxDelay ?? 20,
      stableAfter: options.stableAfter ?? 10,
      heartbeat: options.heartbeat ?? 10,
      heartbeatTimeout: options.heartbeatTimeout ?? 5,
      publishTimeout: options.publishTimeout ?? 10,
      refreshMargin: options.refreshMargin ?? 10,
      random: options.random ?? Math.random,
      setTimeout: options.setTimeout ?? ((f, ms) => g.setTimeout(f, ms)),
      clearTimeout: options.clearTimeout ?? ((t) => g.clearTimeout(t)),
      window: options.window ?? g,
    };
    if (typeof this.#o.WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass options.WebSocket (e.g. from the ws package)');
    }
  }

  /** The room's object: joins it now if connected, else on connecting. Same name, same object. */
  room(name) {
    if (this.state === 'closed') throw new Error('the client is closed');
    let room = this.#rooms.get(name);
    if (room) return room;
    room = new Room(this, name);
    this.#rooms.set(name, room);
    if (this.#ws && this.#ws.readyState === 1) this.#join(room);
    return room;
  }

  /** Starts connecting (and staying connected). */
  connect() {
    if (this.state === 'closed') throw new Error('the client is closed');
    if (this.#wantConnected) return this;
    this.#wantConnected = true;
    this.#watchNetwork();
    this.#open();
    return this;
  }

  /** Closes for good: state `closed`, pending publishes rejected. */
  close(code = 1000, reason = 'closed by the application') {
    this.#finish({ code, reason });
  }

  /**
   * The delay before reconnect attempt number `attempt` (0 = first), in seconds: full
   * jitter between minDelay and min(maxDelay, minDelay * 2^(attempt+1)).
   */
  backoffDelay(attempt) {
    const { minDelay, maxDelay, random } = this.#o;
    const cap = Math.min(maxDelay, minDelay * 2 ** (attempt + 1));
    return minDelay + random() * (cap - minDelay);
  }

  // --- connection -----------------------------------------------------------------------

  #setState(state, info) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state, info);
  }

  #timer(f, seconds) {
    return this.#o.setTimeout(f, Math.max(0, seconds * 1000));
  }
  #clear(t) {
    if (t !== null) this.#o.clearTimeout(t);
    return null;
  }

  #watchNetwork() {
    const w = this.#o.window;
    if (!w || typeof w.addEventListener !== 'function' || this.#removeWindowListeners) return;
    const online = () => {
      this.#offline = false;
      if (this.#wantConnected && this.state === 'disconnected') {
        this.#reconnectTimer = this.#clear(this.#reconnectTimer);
        this.#attempt = 0;
        this.#open();
      }
    };
    const offline = () => {
      this.#offline = true;
      this.#reconnectTimer = this.#clear(this.#reconnectTimer);
    };
    w.addEventListener('online', online);
    w.addEventListener('offline', offline);
    this.#removeWindowListeners = () => {
      w.removeEventListener('online', online);
      w.removeEventListener('offline', offline);
    };
  }

  #isOffline() {
    const nav = this.#o.window?.navigator;
    return this.#offline || (nav && nav.onLine === false);
  }

  // Opening never throws at its callers: an unexpected failure is told as an `error`
  // event and retried like a failed connection.
  #open() {
    this.#openNow().catch((e) => {
      this.emit('error', { reason: `connect failed: ${e?.message ?? e}`, id: null });
      if (this.state === 'connecting') this.#retry({ code: null, reason: String(e?.message ?? e) });
    });
  }

  async #openNow() {
    this.#reconnectTimer = null;
    if (!this.#wantConnected || this.state === 'closed') return;
    if (this.#isOffline()) {
      this.#setState('disconnected', { reason: 'offline' });
      return;
    }
    this.#setState('connecting');
    let token = null;
    if (this.#o.getToken) {
      try {
        token = await this.#o.getToken();
      } catch (e) {
        if (isUnauthorized(e)) return this.#finish({ code: null, reason: e.message || 'unauthorized', error: e });
        return this.#retry({ code: null, reason: `getToken failed: ${e?.message ?? e}` });
      }
      if (this.state === 'closed' || !this.#wantConnected) return;
    }
    this.#token = token;
    let url = this.#url;
    const pathRoom = this.#rooms.get(this.#pathRoom);
    if (pathRoom && pathRoom.epoch !== null) {
      const u = new URL(url);
      u.searchParams.set('since', String(pathRoom.seq));
      u.searchParams.set('epoch', pathRoom.epoch);
      url = u.toString();
    }
    const protocols = ['mioket.v1'];
    let extra;
    if (token !== null && token !== undefined) {
      if (this.#o.tokenIn === 'header') extra = { headers: { Authorization: `Bearer ${token}` } };
      else protocols.push(`mioket.token.${token}`);
    }
    let ws;
    try {
      ws = extra ? new this.#o.WebSocket(url, protocols, extra) : new this.#o.WebSocket(url, protocols);
    } catch (e) {
      return this.#retry({ code: null, reason: `cannot connect: ${e?.message ?? e}` });
    }
    this.#ws = ws;
    this.#welcomed = false;
    this.#joinedHere = new Set();
    ws.binaryType = 'arraybuffer';
    // A handshake that hangs counts as a dead link too.
    this.#deadTimer = this.#clear(this.#deadTimer);
    if (this.#o.heartbeat > 0) this.#deadTimer = this.#timer(() => {
      this.#deadTimer = null;
      if (this.#ws === ws) this.#lost({ code: null, reason: 'connect timeout' });
    }, this.#o.heartbeat + this.#o.heartbeatTimeout);
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#alive();
      // The path's room is joined by the upgrade itself; the others by join ops.
      this.#joinedHere.add(this.#pathRoom);
      for (const room of this.#rooms.values()) if (room.name !== this.#pathRoom) this.#join(room);
    };
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      this.#alive();
      if (typeof ev.data !== 'string') return; // v1 servers send text only
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg && typeof msg === 'object') this.#onFrame(msg);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#lost({ code: ev.code, reason: ev.reason || '' });
    };
  }

  #send(obj) {
    if (!this.#ws || this.#ws.readyState !== 1) return false;
    this.#ws.send(JSON.stringify(obj));
    return true;
  }

  #join(room) {
    if (this.#joinedHere.has(room.name)) return;
    this.#joinedHere.add(room.name);
    const op = { op: 'join', room: room.name, id: `j-${this.#nextId++}` };
    room._joinId = op.id;
    if (room.epoch !== null) {
      op.since = room.seq;
      op.epoch = room.epoch;
    }
    this.#send(op);
  }

  // Any frame is life: restart the idle timer, cancel a pending "dead" verdict.
  #alive() {
    this.#idleTimer = this.#clear(this.#idleTimer);
    this.#deadTimer = this.#clear(this.#deadTimer);
    if (!(this.#o.heartbeat > 0)) return; // heartbeat 0: off
    const ws = this.#ws;
    this.#idleTimer = this.#timer(() => {
      this.#idleTimer = null;
      if (this.#ws !== ws) return;
      this.#send({ op: 'ping', id: `h-${this.#nextId++}` });
      this.#deadTimer = this.#timer(() => {
        this.#deadTimer = null;
        if (this.#ws !== ws) return;
        this.#lost({ code: null, reason: 'heartbeat timeout' });
      }, this.#o.heartbeatTimeout);
    }, this.#o.heartbeat);
  }

  #onFrame(msg) {
    switch (msg.type) {
      case 'welcome':
        return this.#onWelcome(msg);
      case 'message': {
        const room = this.#rooms.get(msg.room);
        if (room && room.joined) room._message(msg);
        return;
      }
      case 'ack': {
        const entry = this.#pending.get(msg.id);
        if (entry) this.#settle(entry, null, { seq: msg.seq });
        return;
      }
      case 'presence': {
        const room = this.#rooms.get(msg.room);
        const entry = typeof msg.id === 'string' ? this.#pending.get(msg.id) : undefined;
        if (entry) {
          if (room) room.online = msg.online;
          const answer = { room: msg.room, online: msg.online, users: Array.isArray(msg.users) ? msg.users : [] };
          if (msg.truncated === true) answer.truncated = true;
          return this.#settle(entry, null, answer);
        }
        if (room) {
          room.online = msg.online;
          room.emit('presence', { room: room.name, online: msg.online });
        }
        return;
      }
      case 'left': {
        // The server took the room away (a refresh that no longer reads it, a moderation
        // removal): as if the application left it, so it is not rejoined.
        this.#joinedHere.delete(msg.room);
        const room = this.#rooms.get(msg.room);
        if (room) this._leave(room, typeof msg.reason === 'string' ? msg.reason : undefined);
        return;
      }
      case 'refreshed':
        return this.#scheduleRefresh(msg.expires_in);
      case 'pong':
        return;
      case 'error':
        return this.#onError(msg);
      default:
    }
  }

  #onWelcome(w) {
    if (w.user !== undefined) this.user = w.user;
    if (typeof w.expires_in === 'number') this.#scheduleRefresh(w.expires_in);
    if (!this.#welcomed) {
      this.#welcomed = true;
      this.#setState('connected');
      this.emit('connected');
      this.#stableTimer = this.#clear(this.#stableTimer);
      const ws = this.#ws;
      this.#stableTimer = this.#timer(() => {
        this.#stableTimer = null;
        if (this.#ws !== ws) return;
        this.#attempt = 0;
        this.#expiredInARow = 0;
      }, this.#o.stableAfter);
    }
    const room = this.#rooms.get(w.room);
    if (!room) {
      // The path's room, joined by the upgrade, that the application did not ask for.
      this.#joinedHere.delete(w.room);
      this.#send({ op: 'leave', room: w.room });
      return;
    }
    room._welcome(w, room.epoch !== null);
    for (const entry of room._takeQueued()) this.#sendPublish(entry);
  }

  #onError(msg) {
    const id = typeof msg.id === 'string' ? msg.id : null;
    if (id && this.#pending.has(id)) {
      return this.#settle(this.#pending.get(id), new PublishError(msg.reason));
    }
    if (id && id.startsWith('h-')) return; // a server without the ping op: any answer is life
    if (id && id.startsWith('r-')) return; // a refused refresh: the server closes with 4001 at expiry
    if (id && id.startsWith('j-')) {
      // A refused join: tell the room (the reason says why, e.g. too many rooms).
      for (const room of this.#rooms.values()) {
        if (room._joinId === id) return room.emit('error', { reason: msg.reason });
      }
    }
    this.emit('error', { reason: msg.reason, id });
  }

  #scheduleRefresh(expiresIn) {
    this.#refreshTimer = this.#clear(this.#refreshTimer);
    if (!this.#o.getToken || typeof expiresIn !== 'number') return;
    const margin = Math.min(this.#o.refreshMargin, expiresIn / 3);
    const ws = this.#ws;
    this.#refreshTimer = this.#timer(async () => {
      this.#refreshTimer = null;
      if (this.#ws !== ws) return;
      let token;
      try {
        token = await this.#o.getToken();
      } catch (e) {
        if (isUnauthorized(e)) return this.#finish({ code: null, reason: e.message || 'unauthorized', error: e });
        return; // the server closes with 4001 at expiry; the reconnect asks again
      }
      if (this.#ws !== ws) return;
      // The same token again (an application with one fixed token) would refresh nothing:
      // the server closes with 4001 at expiry, and the reconnect asks getToken again.
      if (token === null || token === undefined || token === this.#token) return;
      this.#token = token;
      this.#send({ op: 'refresh', token, id: `r-${this.#nextId++}` });
    }, expiresIn - margin);
  }

  // The connection is gone (closed by either side, failed, or declared dead).
  #lost({ code, reason }) {
    const ws = this.#ws;
    this.#ws = null;
    this.#stopConnectionTimers();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        if (typeof ws.terminate === 'function') ws.terminate();
        else if (ws.readyState <= 1) ws.close(4000, 'going away');
      } catch {
        // already closed
      }
    }
    const wasConnected = this.#welcomed;
    this.#welcomed = false;
    for (const room of this.#rooms.values()) room.joined = false;
    this.#rejectSent(new PublishError('disconnected', 'the connection dropped before the ack'));
    if (CONNECT_CODES_TERMINAL.has(code)) return this.#finish({ code, reason });
    if (wasConnected) this.emit('disconnected', { code, reason });
    if (code === CODE_TOKEN_EXPIRED && wasConnected && this.#expiredInARow++ === 0) {
      // The token expired: a new one (getToken runs for every connection), at once; a
      // second 4001 before the connection was stable waits the backoff (no tight loop).
      this.#setState('disconnected', { code, reason });
      return this.#open();
    }
    this.#retry({ code, reason });
  }

  #retry(info) {
    this.#setState('disconnected', info);
    if (!this.#wantConnected || this.state === 'closed') return;
    if (this.#isOffline()) return; // the `online` event brings it back
    const attempt = this.#attempt++;
    const delay = this.backoffDelay(attempt);
    this.emit('reconnecting', { attempt, delay, ...info });
    this.#reconnectTimer = this.#clear(this.#reconnectTimer);
    this.#reconnectTimer = this.#timer(() => this.#open(), delay);
  }

  #stopConnectionTimers() {
    this.#idleTimer = this.#clear(this.#idleTimer);
    this.#deadTimer = this.#clear(this.#deadTimer);
    this.#stableTimer = this.#clear(this.#stableTimer);
    this.#refreshTimer = this.#clear(this.#refreshTimer);
  }

  #finish(info) {
    if (this.state === 'closed') return;
    this.#wantConnected = false;
    this.closeReason = { code: info.code ?? null, reason: info.reason ?? '' };
    if (info.error) this.closeReason.error = info.error;
    this.#reconnectTimer = this.#clear(this.#reconnectTimer);
    this.#stopConnectionTimers();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        ws.close(1000);
      } catch {
        // not open yet or already closed
      }
    }
    this.#removeWindowListeners?.();
    this.#removeWindowListeners = null;
    const err = new PublishError('closed', 'the client was closed');
    for (const entry of [...this.#pending.values()]) this.#settle(entry, err);
    for (const room of this.#rooms.values()) {
      room.joined = false;
      for (const entry of room._takeQueued()) this.#settle(entry, err);
    }
    this.#setState('closed', this.closeReason);
    this.emit('closed', this.closeReason);
  }

  // --- publishes ---------------------------------------------------------------------------

  _publish(room, op, timeout = this.#o.publishTimeout) {
    return new Promise((resolve, reject) => {
      op.id ??= `p-${this.#idPrefix}-${this.#nextId++}`;
      if (this.state === 'closed') return reject(new PublishError('closed', 'the client is closed', op.id));
      if (this.#pending.has(op.id) || [...this.#rooms.values()].some((r) => r._hasQueued(op.id))) {
        return reject(new TypeError(`a publish with id ${op.id} is already waiting for its ack`));
      }
      const entry = { room, op, resolve, reject, sent: false, timer: null };
      entry.timer = this.#timer(() => {
        entry.timer = null;
        this.#settle(entry, new PublishError('timeout', `no ack within ${timeout} s`));
      }, timeout);
      if (room.joined) this.#sendPublish(entry);
      else room._queue(entry);
    });
  }

  #sendPublish(entry) {
    entry.sent = true;
    this.#pending.set(entry.op.id, entry);
    this.#send(entry.op);
  }

  #settle(entry, error, value) {
    if (entry.done) return;
    entry.done = true;
    entry.timer = this.#clear(entry.timer);
    if (entry.sent) this.#pending.delete(entry.op.id);
    else entry.room._unqueue(entry);
    if (error instanceof PublishError) error.id = entry.op.id;
    if (error) entry.reject(error);
    else entry.resolve(value);
  }

  #rejectSent(error) {
    for (const entry of [...this.#pending.values()]) this.#settle(entry, error);
  }

  _leave(room, reason) {
    room.active = false;
    this.#rooms.delete(room.name);
    if (this.#joinedHere.has(room.name)) {
      this.#joinedHere.delete(room.name);
      this.#send({ op: 'leave', room: room.name });
    }
    room.joined = false;
    const err = new PublishError('left', 'the room was left');
    for (const entry of [...this.#pending.values()]) if (entry.room === room) this.#settle(entry, err);
    for (const entry of room._takeQueued()) this.#settle(entry, err);
    room.emit('left', reason === undefined ? { room: room.name } : { room: room.name, reason });
  }
}

function validId(id) {
  return typeof id === 'string' && id.length > 0 && new TextEncoder().encode(id).length <= MAX_ID;
}

/** 12 random hex digits (48 bits): Web Crypto where there is one. */
function randomPrefix() {
  const bytes = new Uint8Array(6);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function isUnauthorized(e) {
  return e instanceof Unauthorized || e?.name === 'Unauthorized';
}

// Types of mioket-client (index.js).

export type State = 'disconnected' | 'connecting' | 'connected' | 'closed';

/** Throw from getToken to stop for good (the client moves to `closed`). */
export class Unauthorized extends Error {
  constructor(message?: string);
  name: 'Unauthorized';
}

/** Why a publish failed: the server's error reason, or 'timeout', 'disconnected', 'left', 'closed'. */
export class PublishError extends Error {
  constructor(reason: string, message?: string, id?: string | null);
  name: 'PublishError';
  reason: string;
  /** The publish's id: `publish(data, {id})` retries it, published at most once. */
  id: string | null;
}

export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?(): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols: string[], options?: { headers: Record<string, string> }) => WebSocketLike;

export interface MioketOptions {
  /** Default: globalThis.WebSocket. In Node 20, pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /**
   * Called before every connection and before the token expires; null offers none (and a
   * refresh that gets the token in use sends nothing); throw Unauthorized to stop.
   */
  getToken?: () => string | null | Promise<string | null>;
  /** 'protocol' (default): subprotocol `mioket.token.TOKEN`; 'header': `Authorization: Bearer TOKEN` (ws only). */
  tokenIn?: 'protocol' | 'header';
  /** Backoff bounds in seconds (0.5 and 20). */
  minDelay?: number;
  maxDelay?: number;
  /** Seconds after which a connection resets the backoff (10). */
  stableAfter?: number;
  /** Seconds without a frame before a ping (10), and then before the link is given up (5). */
  heartbeat?: number;
  heartbeatTimeout?: number;
  /** Seconds a publish waits for its ack (10). */
  publishTimeout?: number;
  /** Seconds before expiry to refresh the token (10; at most a third of its lifetime). */
  refreshMargin?: number;
  /** For tests: jitter source and timers. */
  random?: () => number;
  setTimeout?: (f: () => void, ms: number) => unknown;
  clearTimeout?: (t: unknown) => void;
  /** Source of `online`/`offline` events and navigator.onLine (default globalThis). */
  window?: { addEventListener?: Function; removeEventListener?: Function; navigator?: { onLine?: boolean } };
}

export interface Message {
  room: string;
  epoch: string;
  seq: number;
  /** Text as a string, binary as bytes. */
  data: string | Uint8Array;
  /** The sender's token subject, when the sender had a token. */
  from?: string;
}

export interface Joined {
  room: string;
  epoch: string;
  seq: number;
  online: number;
  text: string | null;
  /** true/false on a resume, undefined on a first join. */
  recovered?: boolean;
  user?: string;
  /** true when this connection may not publish in the room (the welcome's `read_only`). */
  readOnly?: boolean;
}

export interface Gap {
  room: string;
  /** 'epoch': the room was made again; 'history': messages after previousSeq were dropped; 'seq': a seq was skipped. */
  reason: 'epoch' | 'history' | 'seq';
  previousEpoch: string | null;
  previousSeq: number;
  epoch: string;
  seq: number;
}

export interface CloseInfo {
  code: number | null;
  reason: string;
  error?: unknown;
}

type Off = () => void;

/** The answer of `room.presence()`: the members online and the users with a token among them. */
export interface PresenceAnswer {
  room: string;
  online: number;
  users: { user: string; info?: Record<string, unknown>; connections: number }[];
  /** Set when the server listed only the first 1,000 users. */
  truncated?: true;
}

export class Room {
  readonly name: string;
  readonly epoch: string | null;
  readonly seq: number;
  readonly online: number | null;
  readonly joined: boolean;
  /** The last welcome's `read_only`: this connection may not publish here. */
  readonly readOnly: boolean;
  readonly active: boolean;
  /** `id` (1 to 64 bytes): retry a publish (the id its PublishError carries); by default a new, unique id. */
  publish(data: string | ArrayBuffer | ArrayBufferView, options?: { timeout?: number; id?: string }): Promise<{ seq: number }>;
  /** Asks the server (the `presence` op); rejects with a PublishError on error, timeout, disconnect, leave. */
  presence(options?: { timeout?: number }): Promise<PresenceAnswer>;
  leave(): void;
  on(event: 'message', handler: (m: Message) => void): Off;
  on(event: 'joined', handler: (j: Joined) => void): Off;
  on(event: 'recovered', handler: (r: { room: string; recovered: boolean; epoch: string; since: number }) => void): Off;
  on(event: 'gap', handler: (g: Gap) => void): Off;
  on(event: 'presence', handler: (p: { room: string; online: number }) => void): Off;
  /** `reason` is set when the server took the room away ('forbidden', 'removed'): it is not rejoined. */
  on(event: 'left', handler: (l: { room: string; reason?: string }) => void): Off;
  on(event: 'error', handler: (e: { reason: string }) => void): Off;
  once(event: string, handler: (...args: any[]) => void): Off;
  off(event: string, handler: (...args: any[]) => void): void;
}

export class Mioket {
  constructor(url: string, options?: MioketOptions);
  readonly state: State;
  readonly closeReason: CloseInfo | null;
  readonly user: string | null;
  room(name: string): Room;
  connect(): this;
  close(code?: number, reason?: string): void;
  backoffDelay(attempt: number): number;
  on(event: 'state', handler: (state: State, info?: unknown) => void): Off;
  on(event: 'connected', handler: () => void): Off;
  on(event: 'disconnected', handler: (info: { code: number | null; reason: string }) => void): Off;
  on(event: 'reconnecting', handler: (info: { attempt: number; delay: number; code: number | null; reason: string }) => void): Off;
  on(event: 'closed', handler: (info: CloseInfo) => void): Off;
  on(event: 'error', handler: (e: { reason: string; id: string | null }) => void): Off;
  once(event: string, handler: (...args: any[]) => void): Off;
  off(event: string, handler: (...args: any[]) => void): void;
}

export function roomOfUrl(url: string): string;

// What the status bar item says: the server's `dgemma/status` notifications when it sends them, otherwise
// what the client sees (process state, requests in flight, their latency). No `vscode` import here.

/** Params of the server's `dgemma/status` notification. */
export interface ServerStatus {
  state: "loading" | "ready" | "busy" | "error";
  message?: string | null;
  device?: string | null;
  model?: string | null;
  lastLatencyMs?: number | null;
}

export type State = "starting" | "loading" | "ready" | "busy" | "error" | "stopped" | "disabled";

export interface StatusView {
  text: string;
  tooltip: string;
  error: boolean;
}

const ICONS: Record<State, string> = {
  starting: "$(loading~spin)",
  loading: "$(loading~spin)",
  busy: "$(loading~spin)",
  ready: "$(check)",
  error: "$(error)",
  stopped: "$(debug-stop)",
  disabled: "$(circle-slash)",
};

export class Status {
  enabled = true;
  private process: "starting" | "running" | "stopped" | "failed" = "stopped";
  private failure?: string;
  private server?: ServerStatus;
  private inFlight = 0;
  private measuredMs?: number;

  starting(): void {
    this.process = "starting";
    this.failure = undefined;
    this.server = undefined; // a new server process has not said anything yet
    this.inFlight = 0;
  }

  running(): void {
    this.process = "running";
  }

  /** A failure stays on show until the next start; what the server last said is gone with it. */
  stopped(): void {
    if (this.process !== "failed") {
      this.process = "stopped";
    }
    this.server = undefined;
    this.inFlight = 0;
  }

  failed(message: string): void {
    this.process = "failed";
    this.failure = message;
    this.inFlight = 0;
  }

  serverStatus(status: ServerStatus): void {
    this.server = status;
  }

  requestStarted(): void {
    this.inFlight += 1;
  }

  /** `ms` is undefined for a request that was cancelled: its time says nothing about the model. */
  requestFinished(ms?: number): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    if (ms !== undefined) {
      this.measuredMs = ms;
    }
  }

  get state(): State {
    if (this.process === "failed") {
      return "error";
    }
    if (!this.enabled) {
      return "disabled";
    }
    if (this.process !== "running") {
      return this.process;
    }
    const server = this.server?.state ?? "ready";
    return server === "ready" && this.inFlight > 0 ? "busy" : server;
  }

  /** The last completion's latency: the server's own figure when it reports one, else the round trip. */
  get latency(): { ms: number; source: "server" | "editor" } | undefined {
    const reported = this.server?.lastLatencyMs;
    if (typeof reported === "number") {
      return { ms: reported, source: "server" };
    }
    return this.measuredMs === undefined ? undefined : { ms: this.measuredMs, source: "editor" };
  }

  view(): StatusView {
    const state = this.state;
    const latency = this.latency;
    const showLatency = latency !== undefined && (state === "ready" || state === "busy");
    const text = `${ICONS[state]} DGemma${showLatency ? ` ${Math.round(latency.ms)} ms` : ""}`;
    const lines = [`DiffusionGemma: ${state}`];
    const message = state === "error" && this.failure ? this.failure : this.server?.message;
    if (message) {
      lines.push(message);
    }
    if (this.server?.model) {
      lines.push(`model: ${this.server.model}`);
    }
    if (this.server?.device) {
      lines.push(`device: ${this.server.device}`);
    }
    if (latency) {
      const where = latency.source === "server" ? "in the server" : "round trip from the editor";
      lines.push(`last completion: ${Math.round(latency.ms)} ms (${where})`);
    }
    lines.push("Click to show the log.");
    return { text, tooltip: lines.join("\n"), error: state === "error" };
  }
}

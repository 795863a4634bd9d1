// When the language client is started, replaced and stopped, and when a crashed server is restarted.
// No `vscode` import here (vscode-languageclient needs one), so that the unit tests run under plain Node.

/** What the lifecycle needs of a `LanguageClient`. */
export interface Startable {
  start(): Promise<void>;
  dispose(): Promise<void>;
}

/** A server that never answered `initialize` (a command that is no language server, say `python`). */
export class StartTimeout extends Error {
  constructor(readonly seconds: number) {
    super(`it did not answer within ${seconds} s`);
  }
}

/**
 * Holds the one current client. Restarts and stops run one after another, and each waits for the start
 * before it to settle: a client disposed while it starts keeps its server running, and registers its
 * commands (and fails on them) after its successor did. Events of a replaced client are for `isCurrent`
 * to tell apart.
 */
export class ClientSlot<C extends Startable> {
  private current?: C;
  private queue: Promise<void> = Promise.resolve();

  /**
   * `create` builds a client (not started); `failed` hears of a start that failed. Nothing waits for it: a
   * restart need not wait for the user to read a message. A start that has not settled after
   * `startTimeoutMs` is ended with `abort` (which stops the server process): until it settles, no restart
   * could run.
   */
  constructor(
    private readonly create: () => C,
    private readonly failed: (error: unknown) => void,
    private readonly abort: (client: C) => void = () => undefined,
    private readonly startTimeoutMs = 60_000,
  ) {}

  get client(): C | undefined {
    return this.current;
  }

  isCurrent(client: C): boolean {
    return client === this.current;
  }

  /** Stops the current client, if any, then starts a new one. */
  restart(): Promise<void> {
    return this.enqueue(async () => {
      await this.disposeCurrent();
      await this.launch();
    });
  }

  stop(): Promise<void> {
    return this.enqueue(() => this.disposeCurrent());
  }

  /**
   * Runs `send` on the current client, also one that is still starting (the language client holds a
   * message until it runs). A client that stopped or failed rejects; its successor starts with the new
   * settings anyway.
   */
  send(send: (client: C) => Promise<void>): Promise<void> {
    return this.current ? send(this.current).catch(() => undefined) : Promise.resolve();
  }

  private enqueue(step: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(step); // no step rejects, so the chain never breaks
    return this.queue;
  }

  private async launch(): Promise<void> {
    const client = this.create();
    this.current = client;
    const starting = client.start().then(
      () => undefined,
      (error: unknown) => error ?? new Error("the start failed"),
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<StartTimeout>((resolve) => {
      timer = setTimeout(() => resolve(new StartTimeout(this.startTimeoutMs / 1000)), this.startTimeoutMs);
    });
    const error = await Promise.race([starting, timeout]);
    clearTimeout(timer);
    if (error instanceof StartTimeout) {
      this.abort(client);
      // The client fails its start once the server is gone; its own report comes first, this one last.
      await Promise.race([starting, delay(2_000)]);
    }
    if (error !== undefined) {
      this.failed(error);
    }
  }

  private async disposeCurrent(): Promise<void> {
    const client = this.current;
    this.current = undefined; // its last state changes (stopping, stopped) are not news
    await client?.dispose().catch(() => undefined); // a client that never ran has nothing to stop
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Whether a server whose connection closed on its own is restarted: not when it never got as far as
 * answering `initialize` (it would only crash again), else up to `maxRestarts` times in `windowMs`.
 */
export class CrashPolicy {
  private crashes: number[] = [];

  constructor(
    readonly maxRestarts = 4,
    readonly windowMs = 3 * 60_000,
  ) {}

  restart(wasRunning: boolean, now = Date.now()): boolean {
    if (!wasRunning) {
      return false;
    }
    this.crashes = [...this.crashes.filter((time) => now - time < this.windowMs), now];
    return this.crashes.length <= this.maxRestarts;
  }
}

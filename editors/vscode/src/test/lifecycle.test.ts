import assert from "node:assert/strict";
import { test } from "node:test";
import { ClientSlot, CrashPolicy, Startable, StartTimeout } from "../lifecycle";

/** A client whose start() settles when the test says so, and that logs what is done to it. */
class FakeClient implements Startable {
  private settle?: (error?: Error) => void;
  readonly sent: string[] = [];

  constructor(
    readonly id: number,
    private readonly log: string[],
    private readonly onDispose: (client: FakeClient) => void = () => undefined,
  ) {}

  start(): Promise<void> {
    this.log.push(`start ${this.id}`);
    return new Promise((resolve, reject) => {
      this.settle = (error) => (error ? reject(error) : resolve());
    });
  }

  finishStart(error?: Error): void {
    this.settle?.(error);
  }

  dispose(): Promise<void> {
    this.log.push(`dispose ${this.id}`);
    this.onDispose(this);
    return Promise.resolve();
  }
}

const settled = () => new Promise((resolve) => setImmediate(resolve));

function slot(onDispose?: (client: FakeClient) => void) {
  const log: string[] = [];
  const created: FakeClient[] = [];
  const failures: unknown[] = [];
  const clients = new ClientSlot(
    () => {
      const client = new FakeClient(created.length + 1, log, onDispose);
      created.push(client);
      return client;
    },
    (error) => failures.push(error),
  );
  return { clients, log, created, failures };
}

test("overlapping restarts run one after another; a starting client is disposed once its start settled", async () => {
  const { clients, log, created } = slot();
  void clients.restart();
  void clients.restart(); // e.g. Restart Server while the first server is still starting
  const last = clients.restart();
  await settled();
  assert.deepEqual(log, ["start 1"]);
  created[0].finishStart();
  await settled();
  assert.deepEqual(log, ["start 1", "dispose 1", "start 2"]);
  created[1].finishStart();
  await settled();
  created[2].finishStart();
  await last;
  assert.deepEqual(log, ["start 1", "dispose 1", "start 2", "dispose 2", "start 3"]);
  assert.equal(clients.client, created[2]); // one server left, the newest
});

test("a replaced client is no longer current, already while it is disposed", async () => {
  const currentWhileDisposed: boolean[] = [];
  const { clients, created } = slot((client) => currentWhileDisposed.push(clients.isCurrent(client)));
  const first = clients.restart();
  await settled();
  created[0].finishStart();
  await first;
  assert.ok(clients.isCurrent(created[0]));
  const second = clients.restart();
  await settled();
  created[1].finishStart();
  await second;
  assert.deepEqual(currentWhileDisposed, [false]);
  assert.ok(!clients.isCurrent(created[0]));
  assert.ok(clients.isCurrent(created[1]));
});

test("a failed start is reported once, and stopping after it resolves", async () => {
  const { clients, created, failures } = slot();
  const started = clients.restart();
  await settled();
  created[0].finishStart(new Error("spawn dgemma-lsp ENOENT"));
  await started;
  assert.deepEqual(
    failures.map((error) => String(error)),
    ["Error: spawn dgemma-lsp ENOENT"],
  );
  created[0].dispose = () => Promise.reject(new Error("Client is not running and can't be stopped"));
  await clients.stop(); // what deactivate() returns
  assert.equal(clients.client, undefined);
});

test("a start that hangs is aborted after the timeout and reported, and a restart then runs", async () => {
  const log: string[] = [];
  const created: FakeClient[] = [];
  const failures: unknown[] = [];
  const clients = new ClientSlot(
    () => {
      const client = new FakeClient(created.length + 1, log);
      created.push(client);
      return client;
    },
    (error) => failures.push(error),
    (client) => {
      log.push(`abort ${client.id}`);
      client.finishStart(new Error("connection closed")); // what killing the server process does
    },
    50,
  );
  await clients.restart(); // the server never answers initialize
  assert.deepEqual(log, ["start 1", "abort 1"]);
  assert.equal(failures.length, 1);
  assert.ok(failures[0] instanceof StartTimeout);
  const restarted = clients.restart();
  await settled();
  created[1].finishStart();
  await restarted;
  assert.deepEqual(log, ["start 1", "abort 1", "dispose 1", "start 2"]);
  assert.equal(failures.length, 1);
});

test("settings reach a client that is still starting; none is sent once it stopped", async () => {
  const { clients, created } = slot();
  void clients.restart();
  await settled();
  await clients.send(async (client) => void client.sent.push("didChangeConfiguration"));
  assert.deepEqual(created[0].sent, ["didChangeConfiguration"]);
  created[0].finishStart();
  await clients.stop();
  let called = false;
  await clients.send(async () => void (called = true));
  assert.equal(called, false);
  // A client that stopped on its own rejects the notification; nobody hears of it.
  void clients.restart();
  await settled();
  await clients.send(() => Promise.reject(new Error("Client is not running")));
});

test("a server that crashes before it ran is not restarted", () => {
  const policy = new CrashPolicy();
  assert.equal(policy.restart(false, 0), false);
});

test("a running server is restarted 4 times in 3 minutes, then not", () => {
  const policy = new CrashPolicy(4, 180_000);
  assert.deepEqual(
    [0, 1, 2, 3, 4].map((i) => policy.restart(true, i * 1000)),
    [true, true, true, true, false],
  );
  // Once the old crashes are out of the window it is restarted again.
  assert.equal(policy.restart(true, 200_000), true);
});

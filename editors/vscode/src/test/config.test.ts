import assert from "node:assert/strict";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import {
  crashMessage,
  enableUpdate,
  languageEnabled,
  serverCommand,
  serverOptions,
  Settings,
  startFailureMessage,
  statusEnabled,
} from "../config";
import { StartTimeout } from "../lifecycle";

function settings(values: Record<string, unknown>): Settings {
  return { get: <T>(key: string) => values[key] as T | undefined };
}

test("the server command defaults to dgemma-lsp from PATH", () => {
  assert.deepEqual(serverCommand(settings({})), { command: "dgemma-lsp", args: ["--stdio"] });
  assert.deepEqual(serverCommand(settings({ "server.command": [], "server.pythonPath": "" })), {
    command: "dgemma-lsp",
    args: ["--stdio"],
  });
});

test("a Python interpreter runs the module", () => {
  assert.deepEqual(serverCommand(settings({ "server.pythonPath": "~/venv/bin/python" })), {
    command: path.join(os.homedir(), "venv/bin/python"),
    args: ["-m", "dgemma_lsp", "--stdio"],
  });
});

test("an explicit command wins over the interpreter", () => {
  const values = {
    "server.command": ["/opt/dgemma-lsp", "--stdio", "-v"],
    "server.pythonPath": "/usr/bin/python3",
  };
  assert.deepEqual(serverCommand(settings(values)), { command: "/opt/dgemma-lsp", args: ["--stdio", "-v"] });
});

test("the server options: every server setting that is set, with ~ expanded in modelPath", () => {
  const values = {
    modelPath: "~/models/dg",
    device: "cuda:1",
    seed: null,
    maxDenoisingSteps: 12,
    prefixTokens: 1536,
    enable: { markdown: false },
    "server.pythonPath": "/usr/bin/python3", // a client setting, not sent
  };
  assert.deepEqual(serverOptions(settings(values)), {
    modelPath: path.join(os.homedir(), "models/dg"),
    device: "cuda:1",
    seed: null, // null is the server's default too, and says "back to the default" in a settings change
    maxDenoisingSteps: 12,
    prefixTokens: 1536,
    enable: { markdown: false },
  });
});

test("a missing executable gets an actionable message", () => {
  const error = Object.assign(new Error("spawn dgemma-lsp ENOENT"), { code: "ENOENT" });
  const message = startFailureMessage(error, { command: "dgemma-lsp", args: ["--stdio"] });
  assert.match(message, /`dgemma-lsp` was not found/);
  assert.match(message, /dgemma\.server\.pythonPath/);
});

test("other start failures name the command line, the reason and the settings to check", () => {
  const message = startFailureMessage(new Error("exited with code 1"), {
    command: "/x/python",
    args: ["-m", "y"],
  });
  assert.match(
    message,
    /^DiffusionGemma: the server \(`\/x\/python -m y`\) did not start: exited with code 1\./,
  );
  assert.match(message, /`dgemma\.server\.pythonPath` \(or `dgemma\.server\.command`\)/);
});

test("a server that exits while starting: the message names the settings, not the closed connection", () => {
  const server = { command: "/usr/bin/python", args: ["-m", "dgemma_lsp", "--stdio"] };
  // How vscode-languageclient rejects start() then: vscode-jsonrpc's PendingResponseRejected.
  const closed = Object.assign(new Error("Pending response rejected since connection got disposed"), {
    code: -32097,
  });
  for (const error of [closed, undefined]) {
    const message = startFailureMessage(error, server);
    assert.match(message, /`\/usr\/bin\/python -m dgemma_lsp --stdio`\) exited while starting/);
    assert.match(message, /dgemma\.server\.pythonPath/);
  }
});

test("a server that never answered initialize: the message says so and names the settings", () => {
  const message = startFailureMessage(new StartTimeout(60), { command: "/usr/bin/python", args: [] });
  assert.match(message, /`\/usr\/bin\/python`\) did not answer `initialize` within 60 s and was stopped/);
  assert.match(message, /dgemma\.server\.pythonPath/);
});

test("a server that crashed too often says so", () => {
  assert.match(crashMessage({ command: "dgemma-lsp", args: [] }, 5, 3), /crashed 5 times in 3 minutes/);
});

test("the status says disabled for the active editor's language, or for * without one", () => {
  const enable = { "*": false, python: true };
  assert.equal(statusEnabled(enable, "python"), true);
  assert.equal(statusEnabled(enable, "markdown"), false);
  assert.equal(statusEnabled(enable, undefined), false);
  assert.equal(statusEnabled(undefined, undefined), true);
});

test("Enable / Disable write * where dgemma.enable takes effect: the workspace's when it has one", () => {
  assert.deepEqual(enableUpdate(undefined, false), { level: "global", value: { "*": false } });
  assert.deepEqual(enableUpdate({ globalValue: { markdown: false } }, false), {
    level: "global",
    value: { markdown: false, "*": false },
  });
  assert.deepEqual(enableUpdate({ globalValue: { "*": true }, workspaceValue: { "*": false } }, true), {
    level: "workspace",
    value: { "*": true },
  });
});

test("per-language enable: the language's entry, else *, else on", () => {
  assert.equal(languageEnabled(undefined, "python"), true);
  assert.equal(languageEnabled({}, "python"), true);
  assert.equal(languageEnabled({ "*": false }, "python"), false);
  assert.equal(languageEnabled({ "*": false, python: true }, "python"), true);
  assert.equal(languageEnabled({ markdown: false }, "python"), true);
  assert.equal(languageEnabled({ markdown: false }, "markdown"), false);
});

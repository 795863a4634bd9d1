import assert from "node:assert/strict";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { languageEnabled, serverCommand, serverOptions, Settings, startFailureMessage } from "../config";

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

test("other start failures name the command line and the reason", () => {
  const message = startFailureMessage(new Error("exited with code 1"), {
    command: "/x/python",
    args: ["-m", "y"],
  });
  assert.equal(message, "DiffusionGemma: the server (`/x/python -m y`) did not start: exited with code 1");
});

test("per-language enable: the language's entry, else *, else on", () => {
  assert.equal(languageEnabled(undefined, "python"), true);
  assert.equal(languageEnabled({}, "python"), true);
  assert.equal(languageEnabled({ "*": false }, "python"), false);
  assert.equal(languageEnabled({ "*": false, python: true }, "python"), true);
  assert.equal(languageEnabled({ markdown: false }, "python"), true);
  assert.equal(languageEnabled({ markdown: false }, "markdown"), false);
});

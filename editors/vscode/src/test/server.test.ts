// The command and the settings the extension sends, against the real dgemma-lsp over stdio.
// Needs a Python with dgemma-lsp installed: $DGEMMA_PYTHON, else python3 from PATH (CI: the project's venv).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { createMessageConnection, StreamMessageReader, StreamMessageWriter } from "vscode-jsonrpc/node";
import { serverCommand, serverOptions, startFailureMessage } from "../config";
import { ServerStatus, Status } from "../status";

const ROOT = path.join(__dirname, "..", "..");
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
const PYTHON = process.env.DGEMMA_PYTHON ?? "python3";

/** The settings of a fresh install (package.json's defaults), keyed as `settings.get` sees them. */
function defaults(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(manifest.contributes.configuration.properties)) {
    values[key.replace(/^dgemma\./, "")] = (spec as { default: unknown }).default;
  }
  return { ...values, ...overrides };
}

async function until(condition: () => boolean, ms: number): Promise<void> {
  for (const start = Date.now(); !condition() && Date.now() - start < ms;) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test(
  "the default settings start the server on its bundled model, which completes",
  { timeout: 60_000 },
  async () => {
    const values = defaults({ "server.pythonPath": PYTHON });
    const settings = { get: <T>(key: string) => values[key] as T | undefined };
    const server = serverCommand(settings);
    const env = { ...process.env };
    delete env.DGEMMA_MODEL;
    const child = spawn(server.command, server.args, { env, stdio: ["pipe", "pipe", "inherit"] });
    const connection = createMessageConnection(
      new StreamMessageReader(child.stdout),
      new StreamMessageWriter(child.stdin),
    );
    const messages: string[] = [];
    connection.onNotification("window/showMessage", (params: { message: string }) => {
      messages.push(params.message);
    });
    const status = new Status();
    const statuses: ServerStatus[] = [];
    connection.onNotification("dgemma/status", (params: ServerStatus) => {
      statuses.push(params);
      status.serverStatus(params);
    });
    connection.listen();
    try {
      const result: { capabilities: Record<string, unknown>; serverInfo: { name: string } } =
        await connection.sendRequest("initialize", {
          processId: process.pid,
          rootUri: null,
          capabilities: { textDocument: { inlineCompletion: {} } },
          initializationOptions: serverOptions(settings),
        });
      assert.equal(result.serverInfo.name, "dgemma-lsp");
      assert.ok(result.capabilities.inlineCompletionProvider, "the server offers inline completion");
      await connection.sendNotification("initialized", {});
      status.starting();
      status.running();
      // What the extension sends when a setting changes.
      await connection.sendNotification("workspace/didChangeConfiguration", {
        settings: { dgemma: serverOptions(settings) },
      });
      const uri = "file:///tmp/hello.py";
      await connection.sendNotification("textDocument/didOpen", {
        textDocument: { uri, languageId: "python", version: 1, text: "def f():\n    return \n" },
      });
      // No model is configured: the server loads the small model bundled with it.
      await until(() => statuses.some((s) => s.state === "ready" || s.state === "error"), 30_000);
      assert.ok(
        statuses.some((s) => s.state === "ready"),
        JSON.stringify(statuses),
      );
      assert.match(String(statuses.at(-1)?.model), /bundled/);
      const answer: { items: { insertText: string }[] } = await connection.sendRequest(
        "textDocument/inlineCompletion",
        { textDocument: { uri }, position: { line: 1, character: 11 }, context: { triggerKind: 1 } },
      );
      assert.ok(Array.isArray(answer.items), JSON.stringify(answer));
      // Neither the initializationOptions nor the settings section had anything the server rejected.
      assert.ok(!messages.some((m) => m.includes("Ignored")), messages.join("\n"));
      assert.equal(status.view().error, false, JSON.stringify(statuses));

      await connection.sendRequest("shutdown");
      await connection.sendNotification("exit");
      const code = await new Promise((resolve) => child.on("exit", resolve));
      assert.equal(code, 0);
    } finally {
      connection.dispose();
      child.kill();
    }
  },
);

test("a command that does not exist fails to spawn with a message that says what to set", async () => {
  const values = defaults({ "server.command": ["/nonexistent/dgemma-lsp", "--stdio"] });
  const server = serverCommand({ get: <T>(key: string) => values[key] as T | undefined });
  const error = await new Promise((resolve) => spawn(server.command, server.args).on("error", resolve));
  const expected = /`\/nonexistent\/dgemma-lsp` was not found.*dgemma\.server\.command/;
  assert.match(startFailureMessage(error, server), expected);
  // The same error as vscode-languageclient reports it (lib/node/main.js, handleChildProcessStartError).
  const reported = `Launching server using command ${server.command} failed. ${error}`;
  assert.match(startFailureMessage(reported, server), expected);
});

import assert from "node:assert/strict";
import { test } from "node:test";
import { Status } from "../status";

function running(): Status {
  const status = new Status();
  status.starting();
  status.running();
  return status;
}

test("starting, then ready once the client runs", () => {
  const status = new Status();
  status.starting();
  assert.equal(status.view().text, "$(loading~spin) DGemma");
  status.running();
  assert.equal(status.state, "ready");
  assert.equal(status.view().text, "$(check) DGemma");
});

test("without server notifications: busy while a request is out, then the measured latency", () => {
  const status = running();
  status.requestStarted();
  assert.equal(status.state, "busy");
  status.requestFinished(241.6);
  assert.equal(status.state, "ready");
  assert.equal(status.view().text, "$(check) DGemma 242 ms");
  assert.match(status.view().tooltip, /last completion: 242 ms \(round trip from the editor\)/);
});

test("a cancelled request does not change the latency", () => {
  const status = running();
  status.requestStarted();
  status.requestFinished(100);
  status.requestStarted();
  status.requestFinished(undefined);
  assert.deepEqual(status.latency, { ms: 100, source: "editor" });
});

test("the server's dgemma/status wins: loading, then its own latency", () => {
  const status = running();
  status.serverStatus({
    state: "loading",
    message: "Loading model from /m ...",
    model: "/m",
    device: "cuda:0",
  });
  assert.equal(status.state, "loading");
  const tooltip = status.view().tooltip;
  assert.match(tooltip, /Loading model from \/m/);
  assert.match(tooltip, /model: \/m/);
  assert.match(tooltip, /device: cuda:0/);
  status.requestStarted();
  status.requestFinished(300);
  status.serverStatus({ state: "ready", lastLatencyMs: 120, model: "/m", device: "cuda:0" });
  assert.equal(status.view().text, "$(check) DGemma 120 ms");
  assert.match(status.view().tooltip, /last completion: 120 ms \(in the server\)/);
});

test("a server error shows as an error", () => {
  const status = running();
  status.serverStatus({ state: "error", message: "model.safetensors is truncated" });
  const view = status.view();
  assert.equal(view.error, true);
  assert.equal(view.text, "$(error) DGemma");
  assert.match(view.tooltip, /truncated/);
});

test("a failed start is an error until the next start", () => {
  const status = new Status();
  status.starting();
  status.failed("`dgemma-lsp` was not found");
  status.stopped();
  assert.equal(status.state, "error");
  assert.match(status.view().tooltip, /was not found/);
  status.starting();
  assert.equal(status.state, "starting");
  assert.equal(status.view().error, false);
});

test("disabled hides the model state; a restart forgets the old server's status", () => {
  const status = running();
  status.serverStatus({ state: "busy" });
  status.enabled = false;
  assert.equal(status.view().text, "$(circle-slash) DGemma");
  status.enabled = true;
  status.starting();
  status.running();
  assert.equal(status.state, "ready");
});

test("a stopped server's last status is gone: the tooltip does not say ready", () => {
  const status = running();
  status.serverStatus({ state: "ready", message: "Model loaded", model: "/m", device: "cpu" });
  status.stopped();
  assert.equal(status.state, "stopped");
  assert.doesNotMatch(status.view().tooltip, /Model loaded|model: \/m/);
});

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { COMMANDS, SERVER_OPTIONS } from "../config";

const ROOT = path.join(__dirname, "..", "..");
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
const properties: Record<string, { default: unknown; type: string | string[] }> =
  manifest.contributes.configuration.properties;

test("every command the extension registers is contributed, and nothing else", () => {
  const contributed = manifest.contributes.commands.map((c: { command: string }) => c.command).sort();
  assert.deepEqual(contributed, Object.values(COMMANDS).sort());
  for (const binding of manifest.contributes.keybindings) {
    assert.ok(contributed.includes(binding.command), binding.command);
  }
});

test("each server option is a setting; the others are client settings", () => {
  const keys = Object.keys(properties).map((key) => key.replace(/^dgemma\./, ""));
  const isClientSetting = (key: string) => key.startsWith("server.") || key.startsWith("trace.");
  assert.deepEqual(keys.filter((key) => !isClientSetting(key)).sort(), [...SERVER_OPTIONS].sort());
  for (const key of SERVER_OPTIONS) {
    const { default: value, type } = properties[`dgemma.${key}`];
    const types = Array.isArray(type) ? type : [type];
    assert.ok(
      value === null
        ? types.includes("null")
        : types.includes(typeof value === "number" ? "integer" : typeof value),
      key,
    );
  }
});

test("the entry point is built; the engine is the one vscode-languageclient needs", () => {
  assert.ok(fs.existsSync(path.join(ROOT, manifest.main)), `${manifest.main}: run npm run compile`);
  const client = JSON.parse(
    fs.readFileSync(path.join(ROOT, "node_modules/vscode-languageclient/package.json"), "utf8"),
  );
  assert.ok(Number(client.version.split(".")[0]) >= 10, "inline completion is built in from 10 on");
  assert.equal(manifest.engines.vscode, client.engines.vscode);
});

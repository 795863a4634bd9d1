// `vsce package` builds a .vsix with the compiled extension and its runtime dependency, and nothing else.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";

const ROOT = path.join(__dirname, "..", "..");
const PYTHON = process.env.DGEMMA_PYTHON ?? "python3";

test("vsce packages the extension", { timeout: 120_000 }, () => {
  const vsix = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dgemma-vsix-")), "dgemma-lsp.vsix");
  execFileSync(
    process.execPath,
    [
      require.resolve("@vscode/vsce/vsce"),
      "package",
      "--allow-missing-repository",
      "--skip-license",
      "--out",
      vsix,
    ],
    {
      cwd: ROOT,
      stdio: "pipe",
    },
  );
  // A .vsix is a zip file; Python's zipfile lists it without another npm dependency.
  const files = execFileSync(
    PYTHON,
    ["-c", "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))", vsix],
    {
      encoding: "utf8",
    },
  ).split("\n");
  for (const expected of [
    "extension/package.json",
    "extension/out/extension.js",
    "extension/out/config.js",
    "extension/out/lifecycle.js",
    "extension/out/status.js",
    "extension/node_modules/vscode-languageclient/package.json",
  ]) {
    assert.ok(files.includes(expected), `${expected} missing from the .vsix`);
  }
  for (const file of files) {
    assert.ok(
      !/^extension\/(src|out\/test)\/|\.ts$|\.map$|node_modules\/(typescript|eslint|@vscode\/vsce)\//.test(
        file,
      ),
      file,
    );
  }
});

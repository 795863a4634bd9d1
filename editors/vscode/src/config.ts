// From the extension's settings to how the server is started and configured. No `vscode` import here,
// so that the unit tests run under plain Node.
import * as os from "node:os";
import * as path from "node:path";

/** The command ids, as contributed in package.json. */
export const COMMANDS = {
  enable: "dgemma.enable",
  disable: "dgemma.disable",
  triggerCompletion: "dgemma.triggerCompletion",
  showLog: "dgemma.showLog",
  restartServer: "dgemma.restartServer",
} as const;

/** The server's options (README "Configuration"), each a `dgemma.<key>` setting with the same default. */
export const SERVER_OPTIONS = [
  "modelPath",
  "device",
  "seed",
  "maxDenoisingSteps",
  "prefixTokens",
  "suffixTokens",
  "lineMiddleTokens",
  "blockMiddleTokens",
  "infillingMode",
  "backend",
  "canvasMode",
  "kernels",
  "enable",
  "maxLines",
  "debounceMs",
  "candidates",
  "speculate",
  "syntaxCheck",
] as const;

/** What the extension reads settings through: `vscode.WorkspaceConfiguration` has this shape. */
export interface Settings {
  get<T>(key: string): T | undefined;
}

export interface ServerCommand {
  command: string;
  args: string[];
}

function expandHome(file: string): string {
  return file === "~" || file.startsWith("~/") ? path.join(os.homedir(), file.slice(1)) : file;
}

export function serverCommand(settings: Settings): ServerCommand {
  const [command, ...args] = settings.get<string[]>("server.command") ?? [];
  if (command) {
    return { command: expandHome(command), args };
  }
  const python = settings.get<string>("server.pythonPath");
  if (python) {
    return { command: expandHome(python), args: ["-m", "dgemma_lsp", "--stdio"] };
  }
  return { command: "dgemma-lsp", args: ["--stdio"] };
}

/** What the server gets as initializationOptions, and later as the `dgemma` section of didChangeConfiguration. */
export function serverOptions(settings: Settings): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  for (const key of SERVER_OPTIONS) {
    const value = settings.get<unknown>(key);
    if (value !== undefined) {
      options[key] = key === "modelPath" && typeof value === "string" ? expandHome(value) : value;
    }
  }
  return options;
}

/** The server's per-language switch (`enable`): the language's own entry, else "*", else on. */
export function languageEnabled(enable: Record<string, boolean> | undefined, languageId: string): boolean {
  return enable?.[languageId] ?? enable?.["*"] ?? true;
}

/**
 * What to tell the user when the server process cannot be started. vscode-languageclient rejects with a
 * string ("Launching server using command X failed. Error: spawn X ENOENT"), Node's spawn with an Error.
 */
export function startFailureMessage(error: unknown, server: ServerCommand): string {
  const reason = error instanceof Error ? error.message : String(error);
  if ((error as { code?: unknown } | undefined)?.code === "ENOENT" || reason.includes("ENOENT")) {
    return (
      `DiffusionGemma: \`${server.command}\` was not found. Install dgemma-lsp into a Python environment ` +
      "and set `dgemma.server.pythonPath` to its interpreter, or set `dgemma.server.command`."
    );
  }
  const commandLine = [server.command, ...server.args].join(" ");
  return `DiffusionGemma: the server (\`${commandLine}\`) did not start: ${reason}`;
}

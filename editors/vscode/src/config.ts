// From the extension's settings to how the server is started and configured. No `vscode` import here,
// so that the unit tests run under plain Node.
import * as os from "node:os";
import * as path from "node:path";
import { StartTimeout } from "./lifecycle";

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
  "openFilesTokens",
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

/** Whether the status bar says "disabled": for the active editor's language, or "*" without an editor. */
export function statusEnabled(
  enable: Record<string, boolean> | undefined,
  activeLanguageId?: string,
): boolean {
  return languageEnabled(enable, activeLanguageId ?? "*");
}

/** `dgemma.enable` at each level, as `WorkspaceConfiguration.inspect` returns it. */
export interface InspectedEnable {
  globalValue?: Record<string, boolean>;
  workspaceValue?: Record<string, boolean>;
}

/**
 * What Enable / Disable writes: `"*"` in the workspace's `dgemma.enable` when it has one (that one wins over
 * the user's), else in the user's.
 */
export function enableUpdate(
  inspected: InspectedEnable | undefined,
  on: boolean,
): { level: "global" | "workspace"; value: Record<string, boolean> } {
  if (inspected?.workspaceValue !== undefined) {
    return { level: "workspace", value: { ...inspected.workspaceValue, "*": on } };
  }
  return { level: "global", value: { ...inspected?.globalValue, "*": on } };
}

// vscode-jsonrpc's PendingResponseRejected: the server went away before it answered `initialize`.
const CONNECTION_CLOSED = -32097;

/**
 * What to tell the user when the server process cannot be started; `error` is undefined for a server that
 * exited while starting. vscode-languageclient rejects with a string ("Launching server using command X
 * failed. Error: spawn X ENOENT"), Node's spawn with an Error.
 */
export function startFailureMessage(error: unknown, server: ServerCommand): string {
  const reason = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown } | undefined)?.code;
  if (code === "ENOENT" || reason.includes("ENOENT")) {
    return (
      `DiffusionGemma: \`${server.command}\` was not found. Install dgemma-lsp into a Python environment ` +
      "and set `dgemma.server.pythonPath` to its interpreter, or set `dgemma.server.command`."
    );
  }
  const commandLine = [server.command, ...server.args].join(" ");
  const what =
    error === undefined || code === CONNECTION_CLOSED
      ? "exited while starting"
      : error instanceof StartTimeout
        ? `did not answer \`initialize\` within ${error.seconds} s and was stopped`
        : `did not start: ${reason}`;
  return (
    `DiffusionGemma: the server (\`${commandLine}\`) ${what}. Check that \`dgemma.server.pythonPath\` ` +
    "(or `dgemma.server.command`) runs dgemma-lsp; the log (Show Log) has its output."
  );
}

/** What to tell the user when a server that was running crashed too often to be restarted again. */
export function crashMessage(server: ServerCommand, crashes: number, minutes: number): string {
  const commandLine = [server.command, ...server.args].join(" ");
  return (
    `DiffusionGemma: the server (\`${commandLine}\`) crashed ${crashes} times in ${minutes} minutes and was ` +
    "not restarted. The log (Show Log) says why; Restart Server starts it again."
  );
}

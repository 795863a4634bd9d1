// The VS Code side of dgemma-lsp: starts the server, lets vscode-languageclient turn its
// textDocument/inlineCompletion answers into ghost text, and keeps a status bar item up to date.
import * as vscode from "vscode";
import { CloseAction, ErrorAction, LanguageClient, State as ClientState } from "vscode-languageclient/node";
import {
  COMMANDS,
  crashMessage,
  enableUpdate,
  languageEnabled,
  serverCommand,
  serverOptions,
  startFailureMessage,
  statusEnabled,
} from "./config";
import { ClientSlot, CrashPolicy } from "./lifecycle";
import { ServerStatus, Status } from "./status";

const SECTION = "dgemma";

let clients: ClientSlot<LanguageClient> | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel("DiffusionGemma", { log: true });
  const status = new Status();
  const item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  item.command = COMMANDS.showLog;
  item.name = "DiffusionGemma";
  const render = () => {
    const view = status.view();
    item.text = view.text;
    item.tooltip = view.tooltip;
    item.backgroundColor = view.error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
    item.show();
  };
  const settings = () => vscode.workspace.getConfiguration(SECTION);
  const enableSetting = () => settings().get<Record<string, boolean>>("enable");
  const enabled = (languageId: string) => languageEnabled(enableSetting(), languageId);
  const updateEnabled = () => {
    status.enabled = statusEnabled(enableSetting(), vscode.window.activeTextEditor?.document.languageId);
    render();
  };

  const reportFailure = async (message: string) => {
    status.failed(message);
    render();
    const choice = await vscode.window.showErrorMessage(message, "Open Settings", "Show Log");
    if (choice === "Open Settings") {
      await vscode.commands.executeCommand("workbench.action.openSettings", SECTION);
    } else if (choice === "Show Log") {
      log.show();
    }
  };

  let server = serverCommand(settings()); // the current client's: the slot creates one at a time
  const createClient = () => {
    const command = serverCommand(settings());
    server = command;
    const crashes = new CrashPolicy();
    let reachedRunning = false; // since its last start: a server that crashes before then is not restarted
    const next: LanguageClient = new LanguageClient(
      SECTION,
      "DiffusionGemma",
      // No `transport`: the command line is used as given (it carries --stdio itself).
      { command: command.command, args: command.args },
      {
        documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
        initializationOptions: serverOptions(settings()),
        outputChannel: log,
        // A failed start is reported once, by the extension, with the setting to fix.
        initializationFailedHandler: () => false,
        errorHandler: {
          error: (_error, _message, count) => ({
            action: count !== undefined && count <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown,
          }),
          closed: () => {
            if (crashes.restart(reachedRunning)) {
              return { action: CloseAction.Restart };
            }
            // One that crashed while starting ends as StartFailed, reported below.
            if (reachedRunning && clients?.isCurrent(next)) {
              void reportFailure(crashMessage(command, crashes.maxRestarts + 1, crashes.windowMs / 60_000));
            }
            return { action: CloseAction.DoNotRestart, handled: true };
          },
        },
        middleware: {
          provideInlineCompletionItems: async (document, position, context, token, ask) => {
            if (!enabled(document.languageId)) {
              return null;
            }
            status.requestStarted();
            render();
            const started = performance.now();
            try {
              return await ask(document, position, context, token);
            } finally {
              status.requestFinished(token.isCancellationRequested ? undefined : performance.now() - started);
              render();
            }
          },
          // The server's completion item holds the same middle as the ghost text; asking for both would
          // run the model twice per keystroke (and the second request would cancel the first).
          provideCompletionItem: () => null,
        },
      },
    );
    next.onDidChangeState((event) => {
      if (!clients?.isCurrent(next)) {
        return; // a replaced client stopping
      }
      if (event.newState === ClientState.Starting) {
        reachedRunning = false;
        status.starting();
      } else if (event.newState === ClientState.Running) {
        reachedRunning = true;
        status.running();
      } else if (event.newState === ClientState.StartFailed) {
        // Also after a restart that the error handler asked for, which nobody else reports.
        status.failed(startFailureMessage(undefined, command));
      } else {
        status.stopped();
      }
      render();
    });
    next.onNotification("dgemma/status", (params: ServerStatus) => {
      if (clients?.isCurrent(next)) {
        status.serverStatus(params);
        render();
      }
    });
    return next;
  };
  clients = new ClientSlot(
    createClient,
    (error) => void reportFailure(startFailureMessage(error, server)),
    (client) => client.serverProcess?.kill(),
  );
  const restart = () => clients?.restart();

  // "*" covers every language without its own entry in dgemma.enable.
  const setEnabled = (on: boolean) => {
    const { level, value } = enableUpdate(settings().inspect<Record<string, boolean>>("enable"), on);
    const target =
      level === "workspace" ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    return settings().update("enable", value, target);
  };

  context.subscriptions.push(
    log,
    item,
    vscode.commands.registerCommand(COMMANDS.enable, () => setEnabled(true)),
    vscode.commands.registerCommand(COMMANDS.disable, () => setEnabled(false)),
    vscode.commands.registerCommand(COMMANDS.triggerCompletion, () =>
      vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"),
    ),
    vscode.commands.registerCommand(COMMANDS.showLog, () => log.show()),
    vscode.commands.registerCommand(COMMANDS.restartServer, restart),
    vscode.window.onDidChangeActiveTextEditor(updateEnabled),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration(`${SECTION}.enable`)) {
        updateEnabled();
      }
      if (event.affectsConfiguration(`${SECTION}.server`)) {
        void restart();
      } else if (event.affectsConfiguration(SECTION)) {
        // The server applies new options as they come, and reloads the model itself when one it was
        // loaded with changes.
        void clients?.send((client) =>
          client.sendNotification("workspace/didChangeConfiguration", {
            settings: { [SECTION]: serverOptions(settings()) },
          }),
        );
      }
    }),
  );
  updateEnabled();
  void restart();
}

export function deactivate(): Promise<void> | undefined {
  return clients?.stop();
}

// The VS Code side of dgemma-lsp: starts the server, lets vscode-languageclient turn its
// textDocument/inlineCompletion answers into ghost text, and keeps a status bar item up to date.
import * as vscode from "vscode";
import { LanguageClient, State as ClientState } from "vscode-languageclient/node";
import { COMMANDS, languageEnabled, serverCommand, serverOptions, startFailureMessage } from "./config";
import { ServerStatus, Status } from "./status";

const SECTION = "dgemma";

let client: LanguageClient | undefined;

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
  const enabled = (languageId: string) =>
    languageEnabled(settings().get<Record<string, boolean>>("enable"), languageId);
  status.enabled = enabled("*");

  const start = async () => {
    const server = serverCommand(settings());
    const next = new LanguageClient(
      SECTION,
      "DiffusionGemma",
      // No `transport`: the command line is used as given (it carries --stdio itself).
      { command: server.command, args: server.args },
      {
        documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
        initializationOptions: serverOptions(settings()),
        outputChannel: log,
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
      if (event.newState === ClientState.Starting) {
        status.starting();
      } else if (event.newState === ClientState.Running) {
        status.running();
      } else {
        status.stopped();
      }
      render();
    });
    next.onNotification("dgemma/status", (params: ServerStatus) => {
      status.serverStatus(params);
      render();
    });
    client = next;
    try {
      await next.start();
    } catch (error) {
      const message = startFailureMessage(error, server);
      status.failed(message);
      render();
      const choice = await vscode.window.showErrorMessage(message, "Open Settings", "Show Log");
      if (choice === "Open Settings") {
        await vscode.commands.executeCommand("workbench.action.openSettings", SECTION);
      } else if (choice === "Show Log") {
        log.show();
      }
    }
  };

  const stop = async () => {
    const current = client;
    client = undefined;
    if (current) {
      await current.dispose().catch(() => undefined); // a server that never started has nothing to stop
    }
  };

  const restart = async () => {
    await stop();
    await start();
  };

  // "*" covers every language without its own entry in dgemma.enable.
  const setEnabled = (on: boolean) => {
    const enable = settings().inspect<Record<string, boolean>>("enable")?.globalValue ?? {};
    return settings().update("enable", { ...enable, "*": on }, vscode.ConfigurationTarget.Global);
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
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration(`${SECTION}.enable`)) {
        status.enabled = enabled("*");
        render();
      }
      if (event.affectsConfiguration(`${SECTION}.server`)) {
        void restart();
      } else if (event.affectsConfiguration(SECTION) && client?.isRunning()) {
        // The server applies new options as they come, and reloads the model itself when one it was
        // loaded with changes.
        void client.sendNotification("workspace/didChangeConfiguration", {
          settings: { [SECTION]: serverOptions(settings()) },
        });
      }
    }),
  );
  render();
  void start();
}

export function deactivate(): Thenable<void> | undefined {
  return client?.stop();
}

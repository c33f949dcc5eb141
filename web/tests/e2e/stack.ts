/**
 * The real thing for the browser tests: the transactions service under
 * gunicorn on a throwaway embedded PostgreSQL, and the billing page built
 * with `next build` and served by `next start`, all on 127.0.0.1. Every
 * process started here is stopped by `stop()`, whatever happened before.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const WEB_ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const REPO_ROOT = join(WEB_ROOT, "..");
const VENV_BIN = join(REPO_ROOT, ".venv", "bin");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** Run a command to completion; its output goes to `log`, and a failure quotes the log. */
export async function run(command: string, args: string[], options: { env: NodeJS.ProcessEnv; log: string; cwd?: string }) {
  const out = openSync(options.log, "a");
  const child = spawn(command, args, { cwd: options.cwd ?? REPO_ROOT, env: options.env, stdio: ["ignore", "pipe", out] });
  let stdout = "";
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", resolve);
  });
  if (code !== 0) {
    throw new Error(`${command} ${args.join(" ")} exited with ${code}:\n${stdout}\n${tail(options.log)}`);
  }
  return stdout.trim();
}

function tail(path: string): string {
  return existsSync(path) ? readFileSync(path, "utf8").slice(-4000) : "";
}

/** A long-running process in its own process group, so that stopping it stops its children too. */
export class Service {
  private child: ChildProcess | null = null;

  constructor(
    readonly name: string,
    private readonly command: string,
    private readonly args: string[],
    private readonly options: { env: NodeJS.ProcessEnv; log: string; cwd: string; readyUrl: string },
  ) {}

  async start(): Promise<void> {
    const out = openSync(this.options.log, "a");
    const child = spawn(this.command, this.args, {
      cwd: this.options.cwd,
      env: this.options.env,
      stdio: ["ignore", out, out],
      detached: true,
    });
    this.child = child;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    for (let attempt = 0; attempt < 600; attempt += 1) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      if (await answers(this.options.readyUrl)) return;
      await Promise.race([exited, sleep(100)]);
    }
    await this.stop();
    throw new Error(`${this.name} did not become ready at ${this.options.readyUrl}:\n${tail(this.options.log)}`);
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    signalGroup(child.pid, "SIGTERM");
    const stopped = await Promise.race([exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!stopped) {
      signalGroup(child.pid, "SIGKILL");
      await exited;
    }
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals) {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

async function answers(url: string): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return response.ok;
  } catch {
    return false;
  }
}

export function sleep(ms: number) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** An HS256 token signed with the service's secret, as its identity provider would; `expiresIn` may be negative. */
export function signToken(secret: string, subject: string, expiresIn: number): string {
  const now = Math.floor(Date.now() / 1000);
  const encode = (part: object) => Buffer.from(JSON.stringify(part)).toString("base64url");
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({
    sub: subject,
    iat: now - Math.max(0, -expiresIn) - 60,
    exp: now + expiresIn,
  })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

export interface Stack {
  apiUrl: string;
  webUrl: string;
  secret: string;
  env: NodeJS.ProcessEnv;
  workDir: string;
  api: Service;
  web: Service;
  /** Stop and start the embedded PostgreSQL (same data, same port). */
  stopDatabase(): Promise<void>;
  startDatabase(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Start the database and the service, then build and serve the page with
 * `userToken(secret)` built in. `seed` runs against the service while the page builds,
 * and so does the demo seed of `make run` for each of `demoUserIds`.
 */
export async function startStack(options: {
  userId: string;
  /** Where the page's "Buy credits" leads (NEXT_PUBLIC_BUY_CREDITS_URL); none without it. */
  buyCreditsUrl?: string;
  seed: (apiUrl: string, serviceToken: string) => Promise<void>;
  /** Users to give the demo history of `make run` (`flask demo seed`): three months, each entry at its own moment. */
  demoUserIds?: string[];
}): Promise<Stack & { userToken: string; serviceToken: string }> {
  const python = join(VENV_BIN, "python");
  if (!existsSync(python)) throw new Error(`${python} is missing: run \`make install\` in the repository first`);

  const workDir = mkdtempSync(join(tmpdir(), "billing-e2e-"));
  const dataDir = join(workDir, "postgres");
  const log = join(workDir, "stack.log");
  const [apiPort, webPort] = [await freePort(), await freePort()];
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const webUrl = `http://127.0.0.1:${webPort}`;
  const secret = randomBytes(32).toString("hex");
  const cleanups: Array<() => Promise<void>> = [];

  const stop = async () => {
    const errors: unknown[] = [];
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length) throw new AggregateError(errors, "stopping the browser-test stack failed");
  };

  try {
    const baseEnv = withoutServiceSettings(process.env);
    const devdb = (command: "start" | "stop") =>
      run(python, ["-m", "devtools.devdb", command, "--data-dir", dataDir, "--database", "postgres"], {
        env: baseEnv,
        log,
      });
    cleanups.push(async () => rmSync(workDir, { recursive: true, force: true }));
    cleanups.push(async () => {
      await devdb("stop");
    });
    const databaseUrl = await devdb("start");

    const env: NodeJS.ProcessEnv = {
      ...baseEnv,
      DATABASE_URL: databaseUrl,
      JWT_SECRET_KEY: secret,
      CORS_ORIGINS: webUrl,
    };
    const flask = (...args: string[]) => run(join(VENV_BIN, "flask"), ["--app", "wsgi", ...args], { env, log });
    const [, userToken] = await Promise.all([
      flask("db", "upgrade"),
      flask("tokens", "issue", "--user", options.userId, "--expires-in", "1h"),
    ]);
    // The seeding service's API key: the last line `keys create` prints (it needs the migrated table).
    // `credits:grant` lets the tests record grants (free credits) too; `purchases:write` covers refunds.
    const created = await flask(
      "keys",
      "create",
      "--name",
      "billing-e2e",
      "--scope",
      "users:write purchases:write usage:write credits:grant transactions:read",
    );
    const serviceToken = created.trim().split("\n").pop() ?? "";

    const api = new Service(
      "gunicorn",
      python,
      ["-m", "gunicorn", "--workers", "2", "--bind", `127.0.0.1:${apiPort}`, "wsgi:app"],
      { env, log, cwd: REPO_ROOT, readyUrl: `${apiUrl}/readyz` },
    );
    cleanups.push(() => api.stop());

    const nextBin = join(WEB_ROOT, "node_modules", "next", "dist", "bin", "next");
    const webEnv: NodeJS.ProcessEnv = {
      ...process.env,
      NEXT_TELEMETRY_DISABLED: "1",
      NEXT_PUBLIC_TRANSACTIONS_API_URL: apiUrl,
      NEXT_PUBLIC_DEV_TOKEN: userToken,
      NEXT_PUBLIC_BUY_CREDITS_URL: options.buyCreditsUrl ?? "",
    };
    // The page builds while the service starts and the ledger is filled.
    const seedDemoUsers = async () => {
      for (const demoUserId of options.demoUserIds ?? []) await flask("demo", "seed", "--user", demoUserId);
    };
    await Promise.all([
      run(process.execPath, [nextBin, "build"], { env: webEnv, log, cwd: WEB_ROOT }),
      api.start().then(() => options.seed(apiUrl, serviceToken)),
      seedDemoUsers(),
    ]);

    const web = new Service(
      "next start",
      process.execPath,
      [nextBin, "start", "--hostname", "127.0.0.1", "--port", String(webPort)],
      { env: webEnv, log, cwd: WEB_ROOT, readyUrl: `${webUrl}/billing` },
    );
    cleanups.push(() => web.stop());
    await web.start();

    return {
      apiUrl,
      webUrl,
      secret,
      env,
      workDir,
      api,
      web,
      userToken,
      serviceToken,
      stopDatabase: async () => {
        await devdb("stop");
      },
      startDatabase: async () => {
        await devdb("start");
      },
      stop,
    };
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
}

/** The developer's own service settings must not leak into the test's service. */
function withoutServiceSettings(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(
    Object.entries(env).filter(([name]) => !/^(JWT_|DATABASE_|CORS_|NEXT_PUBLIC_)/.test(name)),
  ) as NodeJS.ProcessEnv;
}

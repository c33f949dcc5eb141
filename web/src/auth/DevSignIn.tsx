"use client";

/**
 * Development sign-in: paste a user token (the USER_TOKEN that `make run`
 * prints) and it is kept in sessionStorage for this tab. The product replaces
 * this page with its identity provider's sign-in.
 */
import { useState, type FormEvent } from "react";

import styles from "./dev-sign-in.module.css";
import { setDevAccessToken } from "./access-token";
import { checkPastedToken } from "./token-check";

/** Only same-site paths are followed after signing in. */
function safeNext(): string {
  const next = new URLSearchParams(window.location.search).get("next");
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/billing";
}

export function DevSignIn() {
  const [token, setToken] = useState("");
  const [problem, setProblem] = useState<string | null>(null);

  function signIn(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const pasted = token.trim();
    const check = checkPastedToken(pasted);
    if (!check.ok) {
      setProblem(check.problem ?? "This token cannot be used.");
      return;
    }
    setDevAccessToken(pasted);
    window.location.assign(safeNext());
  }

  function signOut() {
    setDevAccessToken(null);
    setToken("");
    setProblem(null);
  }

  return (
    <main className={styles.page}>
      <h1>Development sign-in</h1>
      <p>
        Paste a user token for the transactions service, for example the <code>USER_TOKEN</code> that{" "}
        <code>make run</code> prints. It is kept for this browser tab only.
      </p>
      <form onSubmit={signIn} className={styles.form}>
        <label htmlFor="token">Access token</label>
        <textarea
          id="token"
          name="token"
          rows={5}
          value={token}
          onChange={(event) => {
            setToken(event.target.value);
            setProblem(null);
          }}
          spellCheck={false}
          autoComplete="off"
          required
          aria-invalid={problem !== null}
          aria-describedby={problem !== null ? "token-problem" : undefined}
        />
        {problem !== null && (
          <p id="token-problem" role="alert" className={styles.problem} data-testid="sign-in-problem">
            {problem}
          </p>
        )}
        <div className={styles.actions}>
          <button type="submit">Sign in</button>
          <button type="button" onClick={signOut}>
            Forget the pasted token
          </button>
        </div>
      </form>
    </main>
  );
}

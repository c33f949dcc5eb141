"use client";

import { useMutation } from "@tanstack/react-query";

import type { TransactionsApi } from "@/api/client";

import styles from "./billing.module.css";
import { failureMessage, signInHref } from "./failures";
import type { HistoryFilters } from "./filters";
import { unwrap, failureOf } from "./queries";

/**
 * "Download CSV" of the history under the current filters. The file is fetched with the user's bearer
 * token in a header, like every other call, and handed to the browser as a Blob behind an object URL:
 * a plain link could not carry the header, and a token in a URL would end up in logs and history.
 */
export function DownloadCsv({
  api,
  filters,
  userId,
}: {
  api: TransactionsApi;
  filters: HistoryFilters;
  /** Whose history it is, for the file's name when the browser does not show the service's. */
  userId: string;
}) {
  const download = useMutation({
    mutationFn: () =>
      api
        .exportTransactions({ ...(filters.type && { type: filters.type }), ...(filters.status && { status: filters.status }) })
        .then(unwrap),
    onSuccess: ({ blob, filename }) => saveFile(blob, filename ?? exportName(userId)),
  });
  const failure = download.isError ? failureOf(download.error) : null;

  return (
    <div className={styles.download}>
      <button
        type="button"
        className={styles.buttonSecondary}
        onClick={() => download.mutate()}
        disabled={download.isPending}
        aria-describedby={failure ? "download-error" : undefined}
      >
        {download.isPending ? "Preparing CSV…" : "Download CSV"}
      </button>
      {failure && (
        <p id="download-error" className={styles.inlineError} role="alert" data-testid="download-error">
          {failure.kind === "unauthorized" ? (
            <>
              Your session has expired — <a href={signInHref()}>sign in again</a>
            </>
          ) : (
            <>Couldn’t download the CSV: {failureMessage(failure)}</>
          )}
        </p>
      )}
    </div>
  );
}

/**
 * The name the service gives the file (its `Content-Disposition`, "transactions-<user>-<YYYY-MM-DD>.csv",
 * the day in UTC), for a service that does not expose that header to the page's origin.
 */
export function exportName(userId: string, now = new Date()): string {
  return `transactions-${userId}-${now.toISOString().slice(0, 10)}.csv`;
}

/** Save the file under its name, through a link the page clicks and forgets. */
function saveFile(blob: Blob, filename: string) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // Some browsers read the file after the click has returned: the URL goes a while later.
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}

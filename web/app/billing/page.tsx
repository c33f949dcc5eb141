import type { Metadata } from "next";
import { Suspense } from "react";

import { BillingFromUrl } from "@/billing/BillingFromUrl";
import { BillingSkeleton } from "@/billing/Skeletons";

import styles from "./page.module.css";

export const metadata: Metadata = { title: "Credits and history" };

// A static shell: the data is the signed-in user's, so the browser fetches it
// from the transactions service with the user's token.
export default function BillingPage() {
  return (
    <main className={styles.page}>
      <header className={styles.header}>
        <h1>Billing</h1>
        <p>Your credits, and every purchase and generation that used them.</p>
      </header>
      <Suspense fallback={<BillingSkeleton />}>
        <BillingFromUrl />
      </Suspense>
    </main>
  );
}

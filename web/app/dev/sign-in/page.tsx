import type { Metadata } from "next";

import { DevSignIn } from "@/auth/DevSignIn";

export const metadata: Metadata = { title: "Development sign-in" };

export default function DevSignInPage() {
  return <DevSignIn />;
}

/** How a failed call reads on the page, in one set of words for every part of it. */
import type { ApiFailure } from "@/api/client";
import { SIGN_IN_PATH } from "@/auth/access-token";

export function failureMessage(failure: ApiFailure): string {
  switch (failure.kind) {
    case "problem":
      return failure.title;
    case "network":
      return "The billing service could not be reached.";
    case "unauthorized":
      return "Your session has expired — sign in again";
    case "signed-out":
      return "You are signed out.";
  }
}

/** The sign-in page, with the way back to where the user is. */
export function signInHref(): string {
  if (typeof window === "undefined") return SIGN_IN_PATH;
  const back = window.location.pathname + window.location.search;
  return `${SIGN_IN_PATH}?next=${encodeURIComponent(back)}`;
}

/** A 401 outranks everything (signing in again is the only fix), then being signed out. */
export function mostSevere(...failures: (ApiFailure | null)[]): ApiFailure | null {
  const present = failures.filter((failure): failure is ApiFailure => failure !== null);
  return (
    present.find((failure) => failure.kind === "unauthorized") ??
    present.find((failure) => failure.kind === "signed-out") ??
    present[0] ??
    null
  );
}

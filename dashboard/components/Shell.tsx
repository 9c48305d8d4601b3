"use client";
import Link from "next/link";
import { usePathname } from "next/navigation";
import { useEffect, useState, type FormEvent, type ReactNode } from "react";
import { getToken, setToken } from "@/lib/api";

const NAV = [
  ["/", "Overview"],
  ["/trades/", "Trades"],
  ["/models/", "Models"],
  ["/runs/", "Runs"],
  ["/audit/", "Audit"],
] as const;

function TokenPrompt({ refused }: { refused: boolean }) {
  const [value, setValue] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (value.trim()) setToken(value.trim());
  };
  return (
    <form className="card token" onSubmit={submit} data-testid="token-prompt">
      <h2>API token</h2>
      <p>
        {refused ? "The server refused the token. " : ""}
        Enter the token the server was started with (<code>KQ_API_TOKEN</code>). It is kept in this
        tab only (sessionStorage) and sent as <code>Authorization: Bearer</code>.
      </p>
      <input
        type="password"
        name="token"
        aria-label="API token"
        autoComplete="off"
        value={value}
        onChange={(e) => setValue(e.target.value)}
      />
      <button type="submit">Open</button>
    </form>
  );
}

export default function Shell({ children }: { children: ReactNode }) {
  const path = usePathname();
  const [ready, setReady] = useState(false);
  const [hasToken, setHasToken] = useState(false);
  const [refused, setRefused] = useState(false);

  useEffect(() => {
    setHasToken(!!getToken());
    setReady(true);
    const onToken = () => {
      const t = !!getToken();
      setHasToken(t);
      if (t) setRefused(false); // a new token typed; a cleared one keeps the refusal shown
    };
    const on401 = () => {
      // the first refusal clears the token; the page's other requests then fail without one
      if (!getToken()) return;
      setRefused(true);
      setToken(null);
    };
    window.addEventListener("kq-token", onToken);
    window.addEventListener("kq-401", on401);
    return () => {
      window.removeEventListener("kq-token", onToken);
      window.removeEventListener("kq-401", on401);
    };
  }, []);

  return (
    <>
      <header className="top">
        <span className="brand">krakenquant</span>
        <nav>
          {NAV.map(([href, label]) => (
            <Link key={href} href={href} className={path === href || path + "/" === href ? "on" : ""}>
              {label}
            </Link>
          ))}
        </nav>
        {hasToken ? (
          <button className="link" onClick={() => setToken(null)}>
            Forget token
          </button>
        ) : null}
      </header>
      <main>{!ready ? null : hasToken ? children : <TokenPrompt refused={refused} />}</main>
      <footer>All times UTC. Returns and drawdowns in percent.</footer>
    </>
  );
}

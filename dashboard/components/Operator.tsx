"use client";
import { useState, type FormEvent } from "react";
import { api, ApiError, Unauthorized, utc } from "@/lib/api";

// The four actions the API accepts; each needs a reason and its typed word (as the CLI's).
const ACTIONS = ["reactivate", "reset-halt", "pause", "resume"] as const;

type Result = { seq: number; action: string; apply_hour_utc: string | null; warnings: string[] };

/** The operator form: action, reason, typed confirmation; POST /api/operator/{action}. */
export default function Operator({ suggest, onDone }: { suggest?: string; onDone: () => void }) {
  const [action, setAction] = useState<string>(suggest ?? "reactivate");
  const [reason, setReason] = useState("");
  const [confirm, setConfirm] = useState("");
  const [busy, setBusy] = useState(false);
  const [msg, setMsg] = useState<{ ok: boolean; text: string } | null>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setMsg(null);
    try {
      const r = await api<Result>(`/api/operator/${action}`, { method: "POST", body: { reason, confirm } });
      const warn = r.warnings?.length ? ` Warning: ${r.warnings.join("; ")}` : "";
      setMsg({ ok: true, text: `Ledgered as seq ${r.seq}; applied at the close of ${utc(r.apply_hour_utc)}.${warn}` });
      setReason("");
      setConfirm("");
      onDone();
    } catch (err) {
      if (err instanceof Unauthorized) window.dispatchEvent(new Event("kq-401"));
      else setMsg({ ok: false, text: err instanceof ApiError ? err.message : String(err) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="op" onSubmit={submit} data-testid="operator-form">
      <label>
        Action{" "}
        <select name="action" value={action} onChange={(e) => setAction(e.target.value)}>
          {ACTIONS.map((a) => (
            <option key={a} value={a}>
              {a}
            </option>
          ))}
        </select>
      </label>
      <label>
        Reason (ledgered with the action)
        <input name="reason" value={reason} onChange={(e) => setReason(e.target.value)} maxLength={500} />
      </label>
      <label>
        Type <code>{action}</code> to confirm
        <input name="confirm" value={confirm} onChange={(e) => setConfirm(e.target.value)} autoComplete="off" />
      </label>
      <div>
        <button type="submit" disabled={busy || !reason.trim() || confirm.trim() !== action}>
          Send {action}
        </button>
      </div>
      {msg ? (
        <p className={msg.ok ? "" : "err"} data-testid="operator-result">
          {msg.text}
        </p>
      ) : null}
    </form>
  );
}

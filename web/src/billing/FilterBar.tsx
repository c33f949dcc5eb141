import styles from "./billing.module.css";
import {
  hasFilters,
  parseStatusChoice,
  parseTypeChoice,
  TYPE_FILTER_LABELS,
  type HistoryFilters,
} from "./filters";
import { STATUS_LABELS } from "./format";

export function FilterBar({
  filters,
  onChange,
}: {
  filters: HistoryFilters;
  onChange: (filters: HistoryFilters) => void;
}) {
  return (
    <div className={styles.filters} role="group" aria-label="Filter transactions">
      <label className={styles.filter}>
        <span>Type</span>
        <select
          value={filters.type ?? ""}
          onChange={(event) => onChange({ ...filters, type: parseTypeChoice(event.target.value) })}
        >
          <option value="">All types</option>
          {Object.entries(TYPE_FILTER_LABELS).map(([value, label]) => (
            <option key={value} value={value}>
              {label}
            </option>
          ))}
        </select>
      </label>
      <label className={styles.filter}>
        <span>Status</span>
        <select
          value={filters.status ?? ""}
          onChange={(event) => onChange({ ...filters, status: parseStatusChoice(event.target.value) })}
        >
          <option value="">All statuses</option>
          {Object.entries(STATUS_LABELS).map(([value, label]) => (
            <option key={value} value={value}>
              {label}
            </option>
          ))}
        </select>
      </label>
      {hasFilters(filters) && (
        <button type="button" className={styles.linkButton} onClick={() => onChange({})}>
          Clear filters
        </button>
      )}
    </div>
  );
}

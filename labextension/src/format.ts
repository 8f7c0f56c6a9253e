/**
 * Pure formatting and parsing helpers: sizes in binary units, elapsed times,
 * Slurm-style walltimes and memory amounts ("4G").
 */
import { IJob } from './types';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 0 → "0 B", 1536 → "1.5 KiB", 5 * 1024**3 → "5.0 GiB"; unknown → "–". */
export function formatSize(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes) || bytes < 0) {
    return '–';
  }
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) {
    return `${Math.round(value)} B`;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${UNITS[unit]}`;
}

/** "1 file" / "12 files". */
export function formatCount(n: number | null | undefined, noun = 'file'): string {
  if (n === null || n === undefined) {
    return '';
  }
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

const pad = (n: number): string => String(n).padStart(2, '0');

/** Elapsed seconds as "42s", "3m 05s", "2h 07m", "3d 04h". */
export function formatElapsed(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) {
    return '–';
  }
  const s = Math.floor(seconds);
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  }
  return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
}

/** Seconds as a Slurm walltime "H:MM:SS" (or "D-HH:MM:SS" from one day on). */
export function formatWalltime(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const rest = `${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
  return d ? `${d}-${pad(h)}:${rest}` : `${h}:${rest}`;
}

/**
 * Parse a walltime the way Slurm's --time reads it: "M" (minutes), "MM:SS",
 * "H:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS"; a number (not text) is seconds.
 * Returns seconds, or null when the text is not a walltime.
 */
export function parseWalltime(text: string | number): number | null {
  if (typeof text === 'number') {
    return Number.isInteger(text) && text >= 0 ? text : null;
  }
  const t = text.trim();
  const m = /^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$/.exec(t);
  if (!m) {
    return null;
  }
  const [, d, a, b, c] = m;
  const nums = [a, b, c].filter(x => x !== undefined).map(Number);
  let h = 0;
  let min = 0;
  let sec = 0;
  if (d !== undefined) {
    // D-HH, D-HH:MM, D-HH:MM:SS
    [h, min = 0, sec = 0] = nums;
  } else if (nums.length === 3) {
    [h, min, sec] = nums;
  } else if (nums.length === 2) {
    [min, sec] = nums;
  } else {
    [min] = nums; // a bare number is minutes, as in `sbatch --time=45`
  }
  if ((nums.length > 1 || d !== undefined) && (min > 59 || sec > 59 || (d !== undefined && h > 23))) {
    return null;
  }
  return (d ? Number(d) * 86400 : 0) + h * 3600 + min * 60 + sec;
}

const MEM_UNITS: { [u: string]: number } = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Parse "4G", "512M", "2GiB", "1.5 GB" (binary units) or a byte count; null when invalid. */
export function parseMemory(text: string | number): number | null {
  if (typeof text === 'number') {
    return Number.isInteger(text) && text > 0 ? text : null;
  }
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) {
    return null;
  }
  const bytes = Math.round(Number(m[1]) * MEM_UNITS[m[2].toUpperCase()]);
  return bytes > 0 ? bytes : null;
}

/** Bytes as a memory amount the form shows and `parseMemory` reads back ("4G", "512M"). */
export function formatMemory(bytes: number): string {
  for (const u of ['T', 'G', 'M', 'K']) {
    const f = MEM_UNITS[u];
    if (bytes >= f && bytes % f === 0) {
      return `${bytes / f}${u}`;
    }
  }
  return String(bytes);
}

function parseTime(iso: string | null | undefined): number | null {
  if (!iso) {
    return null;
  }
  const t = Date.parse(iso);
  return isNaN(t) ? null : t;
}

/**
 * Seconds a job has run: from `started` (or `created` while it waits) to
 * `ended` (or `now` while it is active).
 */
export function jobElapsed(job: Pick<IJob, 'created' | 'started' | 'ended'>, now: number = Date.now()): number {
  const start = parseTime(job.started) ?? parseTime(job.created);
  if (start === null) {
    return 0;
  }
  const end = parseTime(job.ended) ?? now;
  return Math.max(0, (end - start) / 1000);
}

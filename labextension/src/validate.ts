/**
 * Client-side validation, mirroring the server's rules so the user hears about
 * a mistake before a round trip (the server checks everything again).
 */
import { formatMemory, formatSize, formatWalltime, parseMemory, parseWalltime } from './format';
import { ILimits, ISubmitRequest } from './types';

/** The server's dataset name rule (xnat_bridge.datasets.NAME_RE). */
export const DATASET_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$/;

/** null when the name is acceptable, else the reason in words. */
export function validateDatasetName(name: string): string | null {
  if (!name) {
    return 'a dataset needs a name';
  }
  if (!DATASET_NAME_RE.test(name) || name.trim() !== name) {
    return (
      `dataset name "${name.slice(0, 80)}" is not allowed: use 1-64 letters, digits, spaces, ` +
      "'_', '-' or '.', starting with a letter or digit (no trailing space)"
    );
  }
  return null;
}

/** The Train dialog's fields, as the user typed them. */
export interface ISubmitForm {
  dataset: string;
  script: string;
  partition: string;
  cpus: string;
  memory: string;
  gpus: string;
  walltime: string;
}

export type FormErrors = Partial<Record<keyof ISubmitForm, string>>;

/** The form prefilled from the admin's defaults (and the script picked in the file browser). */
export function defaultForm(limits: ILimits, opts: { script?: string; dataset?: string } = {}): ISubmitForm {
  const partitions = limits.partitions && limits.partitions.length ? limits.partitions : [limits.partition];
  return {
    dataset: opts.dataset || '',
    script: opts.script || '',
    partition: partitions.includes(limits.partition) ? limits.partition : partitions[0],
    cpus: String(limits.default_cpus),
    memory: formatMemory(limits.default_memory),
    gpus: String(limits.default_gpus),
    walltime: formatWalltime(limits.default_walltime)
  };
}

function intField(text: string, what: string, min: number, max: number | null, errors: FormErrors,
  key: keyof ISubmitForm): number | undefined {
  const t = text.trim();
  if (!/^\d+$/.test(t)) {
    errors[key] = `${what} must be a whole number`;
    return undefined;
  }
  const n = Number(t);
  if (n < min) {
    errors[key] = `${what} must be at least ${min}`;
  } else if (max !== null && max !== undefined && n > max) {
    errors[key] = `${what} must be at most ${max} (the limit for this partition)`;
  }
  return n;
}

/** A script path the server may accept: workspace-relative, a .py file, no "..". */
export function validateScriptPath(path: string): string | null {
  const p = path.trim();
  if (!p) {
    return 'choose a training script';
  }
  if (p.startsWith('/') || p.split('/').some(seg => seg === '..')) {
    return 'the script must be a path inside your workspace (relative, without "..")';
  }
  if (!p.endsWith('.py')) {
    return 'the script must be a Python file (.py)';
  }
  return null;
}

/**
 * Check the form against the limits. Returns every problem by field, and the
 * request body (memory in bytes, walltime in seconds) when there is none.
 */
export function validateForm(
  form: ISubmitForm,
  limits: ILimits,
  datasets?: string[]
): { errors: FormErrors; request?: ISubmitRequest } {
  const errors: FormErrors = {};
  if (!form.dataset) {
    errors.dataset = 'choose a dataset';
  } else if (datasets && !datasets.includes(form.dataset)) {
    errors.dataset = `no dataset named "${form.dataset}"`;
  }
  const scriptError = validateScriptPath(form.script);
  if (scriptError) {
    errors.script = scriptError;
  }
  const partitions = limits.partitions && limits.partitions.length ? limits.partitions : [limits.partition];
  if (!partitions.includes(form.partition)) {
    errors.partition = `partition must be one of ${partitions.join(', ')}`;
  }
  const cpus = intField(form.cpus, 'CPUs', 1, limits.max_cpus, errors, 'cpus');
  const gpus = intField(form.gpus, 'GPUs', 0, limits.max_gpus, errors, 'gpus');
  const memory = parseMemory(form.memory);
  if (memory === null) {
    errors.memory = 'memory must be an amount like 4G or 512M';
  } else if (limits.max_memory && memory > limits.max_memory) {
    errors.memory = `memory must be at most ${formatMemory(limits.max_memory)} (${formatSize(limits.max_memory)})`;
  }
  const walltime = parseWalltime(form.walltime);
  if (walltime === null || walltime <= 0) {
    errors.walltime = 'walltime must look like 1:00:00 (hours:minutes:seconds) or 1-00:00:00';
  } else if (limits.max_walltime && walltime > limits.max_walltime) {
    errors.walltime = `walltime must be at most ${formatWalltime(limits.max_walltime)}`;
  }
  if (Object.keys(errors).length) {
    return { errors };
  }
  return {
    errors,
    request: {
      dataset: form.dataset,
      script: form.script.trim(),
      partition: form.partition,
      cpus,
      memory: memory!,
      gpus,
      walltime: walltime!
    }
  };
}

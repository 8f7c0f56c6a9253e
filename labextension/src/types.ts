/**
 * Shapes of the xnat-hpc REST API (see /xnat-hpc/api/, openapi.yaml in xnat_bridge).
 * Kept in one place so the models and views agree with the server contract.
 */

export interface IErrorBody {
  error: string;
  message: string;
  item?: string;
}

export interface IScope {
  user: string;
  xnat_host: string;
  scope: { [project: string]: { subjects: string[]; experiments: string[] } } | null;
  data_mode: 'api' | 'mount';
}

export interface IItems<T> {
  items: T[];
}

export interface IPage<T> extends IItems<T> {
  total: number;
  offset: number;
  limit: number;
}

export interface IProject {
  id: string;
  name: string;
  description: string;
  role: string;
}

export interface ISubject {
  id: string;
  label: string;
  project: string;
  gender?: string;
  yob?: string;
}

export interface IExperiment {
  id: string;
  label: string;
  project: string;
  subject_id: string;
  subject_label: string;
  date?: string;
  xsi_type?: string;
  modality?: string;
}

export interface IResource {
  id: string;
  label: string;
  format?: string;
  file_count: number;
  size: number;
  scan?: string | null;
}

export interface IScan {
  id: string;
  type?: string;
  series_description?: string;
  quality?: string;
  xsi_type?: string;
  frames?: number | string;
  file_count: number;
  size: number;
  resources: IResource[];
}

/** One entry of a dataset selection, exactly as POST datasets expects it. */
export interface ISelectionItem {
  project: string;
  subject?: string;
  experiment?: string;
  scan?: string;
  resource?: string;
}

export interface IDataset {
  name: string;
  version: number;
  versions: number[];
  file_count: number;
  total_size: number;
  created: string;
  manifest_sha256: string;
  selection: ISelectionItem[];
}

export interface ILimits {
  partition: string;
  partitions: string[];
  max_cpus: number | null;
  max_memory: number | null;
  max_gpus: number | null;
  max_walltime: number | null;
  default_cpus: number;
  default_memory: number;
  default_gpus: number;
  default_walltime: number;
  exclusive?: boolean;
  account?: string | null;
  qos?: string | null;
}

export interface IScript {
  path: string;
  size: number;
}

export type JobState =
  | 'staging'
  | 'queued'
  | 'running'
  | 'collecting'
  | 'done'
  | 'failed'
  | 'cancelled'
  | 'lost';

export const ACTIVE_STATES: ReadonlySet<JobState> = new Set<JobState>([
  'staging',
  'queued',
  'running',
  'collecting'
]);

export interface IJobResources {
  partition: string;
  cpus: number;
  memory: number;
  gpus: number;
  walltime: number;
  account?: string | null;
  qos?: string | null;
}

export interface IJob {
  id: string;
  user: string;
  dataset: string;
  dataset_version: number;
  manifest_sha256: string;
  script: string;
  script_sha256: string;
  resources: IJobResources;
  state: JobState;
  slurm_job_id: string | null;
  created: string;
  updated: string;
  started: string | null;
  ended: string | null;
  exit_code: number | null;
  message: string;
  client_token: string | null;
  /** Live staging progress while the job is staging (kept in the server's memory), else null. */
  progress?: IStagingProgress | null;
  /** Results review of a done job on a project that needs it (openapi.yaml: Review), else null. */
  review?: IReview | null;
}

/** `GET jobs` → `review`: held for the owners' review, approved, or rejected with a reason. */
export interface IReview {
  state: 'held' | 'approved' | 'rejected';
  reason: string;
  since: string;
  projects: string[];
  pending: string[];
}

/** `GET jobs` → `progress` of a staging job (openapi.yaml: StagingProgress). */
export interface IStagingProgress {
  phase: 'staging';
  bytes_done: number;
  bytes_total: number;
  files_done: number;
  files_total: number;
  /** bytes/s over the last seconds; null until known */
  rate: number | null;
  /** seconds left at that rate; null while unknown */
  eta_s: number | null;
}

export interface ISubmitRequest {
  dataset: string;
  dataset_version?: number;
  script: string;
  partition?: string;
  cpus?: number;
  memory?: number;
  gpus?: number;
  walltime?: number;
  client_token?: string;
}

export interface ILogChunk {
  text: string;
  offset: number;
  state: JobState;
}

export interface IResults {
  path: string;
  files: { name: string; size: number }[];
  provenance: { [key: string]: unknown };
}

/** A job's results published to XNAT with the hub's signed RO-Crate (`POST jobs/{id}/publish`). */
export interface IPublication {
  /** the XNAT URI of the resource (`/data/projects/…/resources/xnat-hpc-results-{job}`) */
  resource: string;
  /** the resource's address on the XNAT server */
  url: string;
  files: number;
  bytes: number;
  /** the hub's key as an OpenSSH allowed_signers line (`xnat-hpc-hub verify-results --key`) */
  allowed_signers: string;
}

/** A user this server is shared with (`GET shares`). */
export interface IShare {
  user: string;
  created: string;
}

export interface IShares {
  server: string;
  shares: IShare[];
}

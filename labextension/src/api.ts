/**
 * The one way the front-end talks to the server: `requestAPI` (through
 * `ServerConnection.makeRequest`, which adds the XSRF token and the auth
 * header) and one error class, `ApiError`, that carries the HTTP status and the
 * human message from the server's JSON error body — never a stack trace.
 */
import { ServerConnection } from '@jupyterlab/services';

import {
  IDataset,
  IErrorBody,
  IExperiment,
  IItems,
  IJob,
  ILimits,
  ILogChunk,
  IPage,
  IProject,
  IResource,
  IPublication,
  IShares,
  IResults,
  IScan,
  IScope,
  IScript,
  ISelectionItem,
  ISubject,
  ISubmitRequest
} from './types';

/** Where the REST API lives, relative to the server's base URL. */
export const API_PREFIX = 'xnat-hpc/api/';

/** An error answer (or no answer) from the xnat-hpc API, in words. */
export class ApiError extends Error {
  /** HTTP status; 0 when the server could not be reached at all. */
  readonly status: number;
  /** Machine-readable reason from the server (`error` key), e.g. "invalid_request". */
  readonly reason: string;
  /** The item the error is about, when the server named one. */
  readonly item?: string;

  constructor(status: number, message: string, reason = 'error', item?: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.reason = reason;
    this.item = item;
  }

  /** Whether retrying later may help (server down, restarting, XNAT unavailable). */
  get transient(): boolean {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }
}

/** Turn anything thrown into words fit for a person (never a stack trace). */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) {
    return err.message;
  }
  if (err instanceof Error && err.message) {
    return err.message;
  }
  return String(err);
}

/** Build the query string for `params`, skipping undefined/null values. */
export function query(params: { [key: string]: string | number | undefined | null }): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') {
      parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
    }
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

async function errorFromResponse(response: Response): Promise<ApiError> {
  let text = '';
  try {
    text = await response.text();
  } catch {
    // body unreadable: fall through to the status text
  }
  try {
    const body = JSON.parse(text) as Partial<IErrorBody>;
    if (body && typeof body.message === 'string' && body.message) {
      return new ApiError(response.status, body.message, body.error || 'error', body.item);
    }
  } catch {
    // not JSON (e.g. an HTML error page from a proxy)
  }
  const words = response.statusText || 'request failed';
  return new ApiError(response.status, `the server answered ${response.status} (${words})`);
}

/**
 * Call the xnat-hpc API at `path` (relative to `xnat-hpc/api/`, query included).
 * Resolves with the parsed JSON body (undefined for 204), rejects with `ApiError`.
 */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const base = settings.baseUrl.endsWith('/') ? settings.baseUrl : settings.baseUrl + '/';
  const url = base + API_PREFIX + path.replace(/^\/+/, '');
  const headers = new Headers(init.headers || {});
  if (init.body && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, { ...init, headers }, settings);
  } catch (err) {
    throw new ApiError(0, 'cannot reach the Jupyter server (it may be restarting); retrying later helps');
  }
  if (!response.ok) {
    throw await errorFromResponse(response);
  }
  if (response.status === 204) {
    return undefined as unknown as T;
  }
  const text = await response.text();
  if (!text) {
    return undefined as unknown as T;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiError(response.status, 'the server sent an answer that is not JSON');
  }
}

const enc = encodeURIComponent;

/** Typed calls of the REST contract. Every method rejects with `ApiError`. */
export class XnatHpcClient {
  constructor(private readonly settings?: ServerConnection.ISettings) {}

  private get<T>(path: string): Promise<T> {
    return requestAPI<T>(path, { method: 'GET' }, this.settings);
  }

  private send<T>(method: string, path: string, body?: unknown): Promise<T> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    return requestAPI<T>(path, init, this.settings);
  }

  scope(): Promise<IScope> {
    return this.get('scope');
  }

  projects(): Promise<IItems<IProject>> {
    return this.get('projects');
  }

  subjects(project: string, offset = 0, limit = 100): Promise<IPage<ISubject>> {
    return this.get(`projects/${enc(project)}/subjects${query({ offset, limit })}`);
  }

  experiments(project: string, subject?: string, offset = 0, limit = 100): Promise<IPage<IExperiment>> {
    return this.get(`projects/${enc(project)}/experiments${query({ subject, offset, limit })}`);
  }

  scans(project: string, experiment: string): Promise<IItems<IScan>> {
    return this.get(`projects/${enc(project)}/experiments/${enc(experiment)}/scans`);
  }

  resources(project: string, experiment: string, scan?: string): Promise<IItems<IResource>> {
    return this.get(`projects/${enc(project)}/experiments/${enc(experiment)}/resources${query({ scan })}`);
  }

  datasets(): Promise<IItems<IDataset>> {
    return this.get('datasets');
  }

  createDataset(name: string, selection: ISelectionItem[]): Promise<IDataset> {
    return this.send('POST', 'datasets', { name, selection });
  }

  deleteDataset(name: string): Promise<void> {
    return this.send('DELETE', `datasets/${enc(name)}`);
  }

  limits(): Promise<ILimits> {
    return this.get('limits');
  }

  scripts(): Promise<IItems<IScript>> {
    return this.get('scripts');
  }

  jobs(): Promise<IItems<IJob>> {
    return this.get('jobs');
  }

  job(id: string): Promise<IJob> {
    return this.get(`jobs/${enc(id)}`);
  }

  submit(request: ISubmitRequest): Promise<IJob> {
    return this.send('POST', 'jobs', request);
  }

  logs(id: string, offset = 0): Promise<ILogChunk> {
    return this.get(`jobs/${enc(id)}/logs${query({ offset })}`);
  }

  cancel(id: string): Promise<IJob> {
    return this.send('POST', `jobs/${enc(id)}/cancel`);
  }

  results(id: string): Promise<IResults> {
    return this.get(`jobs/${enc(id)}/results`);
  }

  /** The users this server is shared with (its owner only). */
  shares(): Promise<IShares> {
    return this.get('shares');
  }

  /** Share this server with a hub user; the hub checks they read every project of its scope. */
  share(user: string): Promise<unknown> {
    return this.send('POST', 'shares', { user });
  }

  unshare(user: string): Promise<unknown> {
    return this.send('DELETE', `shares/${enc(user)}`);
  }

  /** Publish a done job's results to XNAT (*project*: when the dataset covers several). */
  publish(id: string, project?: string): Promise<IPublication> {
    return this.send('POST', `jobs/${enc(id)}/publish`, project ? { project } : {});
  }
}

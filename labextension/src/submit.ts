/**
 * The Train dialog's submit logic, without any widget: validate, then post
 * at most one request at a time, always with the dialog's one client_token,
 * so a double click, Enter + click, or a retry after an error gives one job.
 */
import { UUID } from '@lumino/coreutils';

import { errorMessage } from './api';
import { IJob, ILimits, ISubmitRequest } from './types';
import { FormErrors, ISubmitForm, validateForm } from './validate';

export type SubmitOutcome =
  | { kind: 'ignored' } // a request is already in flight
  | { kind: 'invalid'; errors: FormErrors }
  | { kind: 'failed'; message: string }
  | { kind: 'submitted'; job: IJob };

export class SubmitController {
  readonly clientToken: string;
  private _inFlight = false;
  job: IJob | null = null;

  constructor(
    private readonly post: (request: ISubmitRequest) => Promise<IJob>,
    private readonly onBusy: (busy: boolean) => void = () => undefined,
    clientToken: string = UUID.uuid4()
  ) {
    this.clientToken = clientToken;
  }

  get inFlight(): boolean {
    return this._inFlight;
  }

  async submit(form: ISubmitForm, limits: ILimits, datasets?: string[]): Promise<SubmitOutcome> {
    if (this._inFlight) {
      return { kind: 'ignored' };
    }
    if (this.job) {
      // already submitted: the server would answer with the same job anyway
      return { kind: 'submitted', job: this.job };
    }
    const { errors, request } = validateForm(form, limits, datasets);
    if (!request) {
      return { kind: 'invalid', errors };
    }
    this._inFlight = true;
    this.onBusy(true);
    try {
      this.job = await this.post({ ...request, client_token: this.clientToken });
      return { kind: 'submitted', job: this.job };
    } catch (err) {
      return { kind: 'failed', message: errorMessage(err) };
    } finally {
      this._inFlight = false;
      this.onBusy(false);
    }
  }
}

/**
 * "Share…" in the XNAT panel: who this server is shared with (each with "Stop sharing") and
 * a hub user to share it with. The hub shares only with users who read, in XNAT, every project
 * of the server's scope; a guest works in the server as its owner, with its scope.
 */
import { Dialog, ReactWidget } from '@jupyterlab/apputils';
import * as React from 'react';

import { errorMessage, XnatHpcClient } from './api';
import { IShare } from './types';

export class ShareBody extends ReactWidget implements Dialog.IBodyWidget<string> {
  shares: IShare[] = [];
  error = '';
  private value = '';

  constructor(private readonly client: XnatHpcClient) {
    super();
    this.addClass('xnat-hpc-share');
  }

  async load(): Promise<void> {
    try {
      this.shares = (await this.client.shares()).shares;
      this.error = '';
    } catch (err) {
      this.error = errorMessage(err);
    }
    this.update();
  }

  async stop(user: string): Promise<void> {
    try {
      await this.client.unshare(user);
    } catch (err) {
      this.error = errorMessage(err);
    }
    await this.load();
  }

  getValue(): string {
    return this.value.trim();
  }

  render(): JSX.Element {
    return (
      <div>
        <p>
          A user you share this server with works in it <strong>as you</strong>, with its XNAT scope: their
          code runs as your account. The hub shares it only with users who may read every project of its
          scope in XNAT, and ends a share when they no longer may.
        </p>
        {this.error && (
          <div className="xnat-hpc-error" role="alert">
            {this.error}
          </div>
        )}
        <ul data-testid="xnat-hpc-shares" aria-label="Shared with">
          {this.shares.map(s => (
            <li key={s.user} data-testid="xnat-hpc-share" data-user={s.user}>
              {s.user}
              {s.created ? ` (since ${s.created})` : ''}{' '}
              <button className="jp-mod-styled jp-mod-warn" onClick={() => void this.stop(s.user)}>
                Stop sharing
              </button>
            </li>
          ))}
          {!this.shares.length && <li>not shared</li>}
        </ul>
        <label>
          Share with (hub user name){' '}
          <input
            id="xnat-hpc-share-user"
            className="jp-mod-styled"
            onChange={e => {
              this.value = e.currentTarget.value;
            }}
          />
        </label>
      </div>
    );
  }
}

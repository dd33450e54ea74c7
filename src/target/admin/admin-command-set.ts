import { AdminGenericStatus, AdminStatusType, NEEDED_RESULT, NEEDED_RESULT_SIZE } from '../../protocol/admin-command.js';
import { setLE32 } from '../../protocol/fields.js';
import { AdminRecordError, AdminTransportStatus, adminClassName, adminCommandName, type AdminCommandId } from '../../protocol/admin-records.js';
import type { AdminRequest, AdminResponse } from '../../protocol/admin-header-format.js';

/** What a command handler answers: a result record and, unless OK, a status of any type. */
export interface AdminReply {
  readonly result?: Buffer;
  readonly statusType?: number;
  readonly status?: number;
}

/**
 * What a handler may know about who asks: `granted` is true when the instance's IVQN, with the
 * identity its connection proved, holds the export's admin grant (docs/PROTOCOL.md "Admin grants").
 */
export interface AdminCaller {
  readonly granted: boolean;
}

export type AdminHandler = (data: Buffer, caller: AdminCaller) => AdminReply | Promise<AdminReply>;

/**
 * Whom a command concerns. 'instance': only the instance it arrives on (any initiator may run
 * it). 'export': the export as a whole or other instances of it (it changes the disk, the shared
 * error log, the target's counters, or would reveal another instance's state): it runs only for
 * a granted caller, everyone else gets TRANSPORT_SPECIFIC ACL_REJECTED before the handler sees
 * the data, so a refusal says nothing about the data or the export's state.
 */
export type AdminScope = 'instance' | 'export';

/** Thrown by a handler whose command-specific data is malformed: DATA_TRANSFER_ERR. */
export class AdminDataError extends Error {}

export const generic = (status: number): AdminReply => ({ statusType: AdminStatusType.GENERIC, status });

/** Require exactly `bytes` of command-specific data. */
export function expectData(data: Buffer, bytes: number, what: string): void {
  if (data.length !== bytes) throw new AdminDataError(`${what} takes ${bytes} bytes of data, got ${data.length}`);
}

/**
 * The admin commands one device instance serves, by class and command number. The target core
 * registers the common, transport and vendor classes; devices register their own class.
 */
export class AdminCommandSet {
  private readonly classes = new Map<number, Map<number, { handler: AdminHandler; scope: AdminScope }>>();

  /** Serve a command; `scope` 'export' makes it need the export's admin grant (see AdminScope). */
  add(cls: number, command: number, handler: AdminHandler, scope: AdminScope = 'instance'): void {
    let commands = this.classes.get(cls);
    if (!commands) this.classes.set(cls, (commands = new Map()));
    if (commands.has(command)) throw new Error(`admin ${adminClassName(cls)} ${adminCommandName(cls, command)} registered twice`);
    commands.set(command, { handler, scope });
  }

  list(): AdminCommandId[] {
    const out: AdminCommandId[] = [];
    for (const [cls, commands] of [...this.classes].sort((a, b) => a[0] - b[0])) {
      for (const command of [...commands.keys()].sort((a, b) => a - b)) out.push({ cls, command });
    }
    return out;
  }

  /**
   * Run one command. Never throws: an unknown class or command, malformed data, a result larger
   * than `resultCapacity` and a handler failure each become the seed's generic status; an
   * export-scoped command from a caller without the grant becomes ACL_REJECTED.
   * `onInternalError` hears about handler failures (the device's log).
   */
  async run(req: AdminRequest, resultCapacity: number, caller: AdminCaller, onInternalError: (err: Error) => void): Promise<AdminResponse> {
    const commands = this.classes.get(req.cls);
    const served = commands?.get(req.command);
    let reply: AdminReply;
    if (!commands) reply = generic(AdminGenericStatus.INVALID_CLASS);
    else if (!served) reply = generic(AdminGenericStatus.INVALID_COMMAND);
    else if (served.scope === 'export' && !caller.granted) {
      reply = { statusType: AdminStatusType.TRANSPORT_SPECIFIC, status: AdminTransportStatus.ACL_REJECTED };
    } else {
      try {
        reply = await served.handler(req.data, caller);
      } catch (err) {
        if (err instanceof AdminDataError || err instanceof AdminRecordError) reply = generic(AdminGenericStatus.DATA_TRANSFER_ERR);
        else {
          onInternalError(err as Error);
          reply = generic(AdminGenericStatus.DEVICE_INTERNAL_ERR);
        }
      }
    }
    const result = reply.result ?? Buffer.alloc(0);
    if (result.length > resultCapacity) {
      // Too small a buffer: say how much the result needs, where there is room to.
      const needed = Buffer.alloc(Math.min(NEEDED_RESULT_SIZE, Math.max(0, resultCapacity)));
      if (needed.length === NEEDED_RESULT_SIZE) setLE32(needed, NEEDED_RESULT.needed, result.length);
      return { result: needed, statusType: AdminStatusType.GENERIC, status: AdminGenericStatus.DATA_TRANSFER_ERR };
    }
    return { result, statusType: reply.statusType ?? AdminStatusType.GENERIC, status: reply.status ?? AdminGenericStatus.OK };
  }
}

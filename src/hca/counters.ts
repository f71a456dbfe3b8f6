/** rxe's counter names (`rdma statistic show`). */
export const COUNTER_NAMES = [
  'sent_pkts', 'rcvd_pkts', 'duplicate_request', 'out_of_seq_request', 'rcvd_rnr_err', 'send_rnr_err', 'rcvd_seq_err',
  'ack_deferred', 'retry_exceeded_err', 'retry_rnr_exceeded_err', 'completer_retry_err', 'send_err', 'link_downed',
  'rdma_sends', 'rdma_recvs',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];

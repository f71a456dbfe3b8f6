#!/usr/bin/env python3
"""The rxe side of `npm run test:interop`: a pyverbs remote control that runs
inside a lab VM (Linux rdma_rxe, rdma-core). The test drives it over TCP with
one JSON object per line and gets one JSON line back per command:

  open      {type: "RC"|"UC"|"UD", size}            -> {qpn, gid, rkey, addr}
  connect   {qpn, gid, psn, mtu}                    -> {}   (UD: just to RTS)
  write     {off, b64}                              -> {}   (into the MR)
  read      {off, len}                              -> {b64}
  post_recv {wr_id, off, len}                       -> {}
  post_send {wr_id, opcode, off, len, imm, raddr, rkey, compare, swap, ud:{gid,qpn,qkey}} -> {}
  poll      {n, timeout}                            -> {wcs: [...]}  (imm_raw: imm_data as the union holds it,
                                                              the invalidated rkey with IBV_WC_WITH_INV)
  mw        {mw_type, off, len, access}             -> {rkey, status}  (a window over the MR bound through the QP:
                                                              type 1 by ibv_bind_mw, type 2 by a BIND_MW WR)
  local_inv {rkey}                                  -> {status}
  close     {}                                      -> {}

post_send's SEND_WITH_INV takes the rkey to invalidate in `inv`.

It listens on port 18600 (the argument overrides) and serves one
connection at a time, each with its own verbs objects.
"""
import base64
import json
import socket
import socketserver
import sys
import time

import pyverbs.enums as e
from pyverbs.addr import AH, AHAttr, GID, GlobalRoute
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR, MW, MWBind, MWBindInfo
from pyverbs.pd import PD
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import RecvWR, SGE, SendWR

GID_INDEX = 1
ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
          | e.IBV_ACCESS_REMOTE_ATOMIC)
# the MR may carry memory windows (rxe rejects MW_BIND in a QP's access flags, so it is the MR's alone)
MR_ACCESS = ACCESS | e.IBV_ACCESS_MW_BIND
QKEY = 0x11111111
MTU = {256: e.IBV_MTU_256, 512: e.IBV_MTU_512, 1024: e.IBV_MTU_1024, 2048: e.IBV_MTU_2048, 4096: e.IBV_MTU_4096}
TYPES = {"RC": e.IBV_QPT_RC, "UC": e.IBV_QPT_UC, "UD": e.IBV_QPT_UD}


class Session:
    def __init__(self):
        self.ctx = Context(name="rxe0")
        self.pd = PD(self.ctx)
        self.cq = CQ(self.ctx, 256)
        self.qp = None
        self.mr = None
        self.ahs = {}
        self.mws = []

    def open(self, a):
        self.type = TYPES[a["type"]]
        self.mr = MR(self.pd, a.get("size", 1 << 20), MR_ACCESS)
        cap = QPCap(max_send_wr=64, max_recv_wr=64, max_send_sge=1, max_recv_sge=1)
        self.qp = QP(self.pd, QPInitAttr(qp_type=self.type, scq=self.cq, rcq=self.cq, cap=cap))
        attr = QPAttr()
        attr.qp_state = e.IBV_QPS_INIT
        attr.pkey_index = 0
        attr.port_num = 1
        mask = e.IBV_QP_STATE | e.IBV_QP_PKEY_INDEX | e.IBV_QP_PORT
        if self.type == e.IBV_QPT_UD:
            attr.qkey = QKEY
            mask |= e.IBV_QP_QKEY
        else:
            attr.qp_access_flags = ACCESS
            mask |= e.IBV_QP_ACCESS_FLAGS
        self.qp.modify(attr, mask)
        gid = self.ctx.query_gid(port_num=1, index=GID_INDEX)
        return {"qpn": self.qp.qp_num, "gid": str(gid), "rkey": self.mr.rkey, "addr": self.mr.buf}

    def connect(self, a):
        attr = QPAttr()
        attr.qp_state = e.IBV_QPS_RTR
        mask = e.IBV_QP_STATE
        if self.type != e.IBV_QPT_UD:
            attr.path_mtu = MTU[a["mtu"]]
            attr.dest_qp_num = a["qpn"]
            attr.rq_psn = a.get("psn", 0)
            gr = GlobalRoute(dgid=GID(a["gid"]), sgid_index=GID_INDEX, hop_limit=64)
            attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=gr)
            mask |= e.IBV_QP_AV | e.IBV_QP_PATH_MTU | e.IBV_QP_DEST_QPN | e.IBV_QP_RQ_PSN
            if self.type == e.IBV_QPT_RC:
                attr.max_dest_rd_atomic = 16
                attr.min_rnr_timer = 12
                mask |= e.IBV_QP_MAX_DEST_RD_ATOMIC | e.IBV_QP_MIN_RNR_TIMER
        self.qp.modify(attr, mask)
        attr = QPAttr()
        attr.qp_state = e.IBV_QPS_RTS
        attr.sq_psn = a.get("mypsn", 0)
        mask = e.IBV_QP_STATE | e.IBV_QP_SQ_PSN
        if self.type == e.IBV_QPT_RC:
            attr.timeout = 14
            attr.retry_cnt = 7
            attr.rnr_retry = 7
            attr.max_rd_atomic = 16
            mask |= e.IBV_QP_TIMEOUT | e.IBV_QP_RETRY_CNT | e.IBV_QP_RNR_RETRY | e.IBV_QP_MAX_QP_RD_ATOMIC
        self.qp.modify(attr, mask)
        return {}

    def write(self, a):
        data = base64.b64decode(a["b64"])
        if data:
            self.mr.write(data, len(data), a["off"])
        return {}

    def read(self, a):
        data = self.mr.read(a["len"], a["off"]) if a["len"] else b""
        return {"b64": base64.b64encode(data).decode()}

    def post_recv(self, a):
        sge = SGE(self.mr.buf + a["off"], a["len"], self.mr.lkey)
        self.qp.post_recv(RecvWR(wr_id=a["wr_id"], num_sge=1, sg=[sge]))
        return {}

    def ah(self, gid):
        if gid not in self.ahs:
            gr = GlobalRoute(dgid=GID(gid), sgid_index=GID_INDEX, hop_limit=64)
            self.ahs[gid] = AH(self.pd, attr=AHAttr(port_num=1, is_global=1, gr=gr))
        return self.ahs[gid]

    def post_send(self, a):
        op = getattr(e, "IBV_WR_" + a["opcode"])
        n = a.get("len", 0)
        # pyverbs wants an SGE even for a 0-byte message: one of length 0 is what C callers post too
        sg = [SGE(self.mr.buf + a.get("off", 0), n, self.mr.lkey)]
        # imm_data's union mate invalidate_rkey is a plain u32: no byte swap for it
        imm = a["inv"] if a["opcode"] == "SEND_WITH_INV" else socket.htonl(a.get("imm", 0))
        wr = SendWR(wr_id=a["wr_id"], opcode=op, num_sge=len(sg), sg=sg, send_flags=e.IBV_SEND_SIGNALED, imm_data=imm)
        if a["opcode"].startswith("RDMA"):
            wr.set_wr_rdma(a["rkey"], a["raddr"])
        elif a["opcode"].startswith("ATOMIC"):
            wr.set_wr_atomic(a["rkey"], a["raddr"], a.get("compare", 0), a.get("swap", 0))
        if "ud" in a:
            wr.set_wr_ud(self.ah(a["ud"]["gid"]), a["ud"]["qpn"], a["ud"]["qkey"])
        self.qp.post_send(wr)
        return {}

    def mw(self, a):
        mw = MW(self.pd, a["mw_type"])
        self.mws.append(mw)
        info = MWBindInfo(self.mr, self.mr.buf + a["off"], a["len"], a["access"])
        if a["mw_type"] == e.IBV_MW_TYPE_1:
            self.qp.bind_mw(mw, MWBind(info, e.IBV_SEND_SIGNALED))
            rkey = mw.rkey
        else:
            wr = SendWR(wr_id=0xb1, opcode=e.IBV_WR_BIND_MW)
            wr.set_bind_wr(mw, info)
            self.qp.post_send(wr)
            rkey = wr.rkey
        wcs = self.poll({"n": 1})["wcs"]
        return {"rkey": rkey, "status": wcs[0]["status"] if wcs else -1}

    def local_inv(self, a):
        wr = SendWR(wr_id=0x1a, opcode=e.IBV_WR_LOCAL_INV)
        wr.imm_data = a["rkey"]
        self.qp.post_send(wr)
        wcs = self.poll({"n": 1})["wcs"]
        return {"status": wcs[0]["status"] if wcs else -1}

    def close(self, a):
        for o in [*self.ahs.values(), *self.mws, self.qp, self.mr, self.cq, self.pd, self.ctx]:
            if o is not None:
                o.close()
        return {}

    def poll(self, a):
        want = a.get("n", 1)
        end = time.time() + a.get("timeout", 10)
        out = []
        while len(out) < want and time.time() < end:
            n, wcs = self.cq.poll(num_entries=want - len(out))
            for wc in wcs[:n]:
                out.append({"wr_id": wc.wr_id, "status": wc.status, "opcode": wc.opcode, "byte_len": wc.byte_len,
                            "imm": socket.ntohl(wc.imm_data), "imm_raw": wc.imm_data, "src_qp": wc.src_qp,
                            "wc_flags": wc.wc_flags})
            if n == 0:
                time.sleep(0.0005)
        return {"wcs": out}


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        s = Session()
        for line in self.rfile:
            a = json.loads(line)
            try:
                r = getattr(s, a["cmd"])(a)
            except Exception as ex:  # the test prints what went wrong on this side
                r = {"error": "%s: %s" % (type(ex).__name__, ex)}
            self.wfile.write((json.dumps(r) + "\n").encode())
            self.wfile.flush()
            if a["cmd"] == "close":
                return


class Server(socketserver.TCPServer):
    allow_reuse_address = True


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18600
    print("agent listening on", port, flush=True)
    Server(("0.0.0.0", port), Handler).serve_forever()

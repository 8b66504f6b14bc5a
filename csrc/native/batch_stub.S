/*
 * batch_stub.S -- the position-independent code remap copies into the scratch page of a target
 * (remap/native.py assembles it with `as` + `objcopy -O binary`).  Two entry points:
 *
 * offset 0x000, the batch walker.  Set by the tracer through PTRACE_SETREGS:
 *   r12 = table of 64-byte entries {nr, a1..a6, result}, r13 = number of entries,
 *   rbx = marker signal, rsp = the thread's safety frame (see inject.py).
 * For each entry it loads rax and the six argument registers, executes `syscall`, stores rax
 * into the entry's result slot, and stops at the first error (-4095..-1).  Then it sends itself
 * the marker signal (tgkill with the ids getpid/gettid return *inside* the target: in a PID
 * namespace the tracer's ids name nothing there, or another process; so the stub asks the
 * kernel rather than being told): the tracer catches that signal-delivery stop and never delivers
 * it.  The marker is a signal the target ignores, so if the driver has died the kernel simply
 * drops it and the stub goes on to `ret`, which enters the safety chain: pop `cleanup`, unmap
 * this scratch area, pop the restorer, rt_sigreturn into the thread's original context.
 *
 * offset 0x180, evict_cleanup: the same for a thread whose frame lives in scratch (below).
 *
 * offset 0x100, cleanup: munmap(scratch) through the `syscall; ret` gadget outside scratch
 * (the next `ret` must not land in the area just unmapped).  The header at 0x200 holds the
 * scratch base, its length and that gadget's address; the tracer writes it once.
 *
 * No stack beyond the frame the tracer prepared, no call, no libc, no absolute addresses.
 */
	.text
	.globl _start
_start:
1:	test	%r13, %r13
	jz	2f
	mov	0(%r12), %rax
	mov	8(%r12), %rdi
	mov	16(%r12), %rsi
	mov	24(%r12), %rdx
	mov	32(%r12), %r10
	mov	40(%r12), %r8
	mov	48(%r12), %r9
	syscall
	mov	%rax, 56(%r12)
	cmp	$-4095, %rax
	jae	2f
	add	$64, %r12
	dec	%r13
	jmp	1b
2:	mov	$39, %eax		/* getpid(): the tgid in the target's own namespace */
	syscall
	mov	%rax, %r14
	mov	$186, %eax		/* gettid() */
	syscall
	mov	%rax, %rsi
	mov	%r14, %rdi
	mov	$234, %eax		/* tgkill(tgid, tid, marker) */
	mov	%rbx, %rdx
	syscall
	ret				/* driver gone: into the safety chain */

	.org	0x100
cleanup:
	mov	$11, %eax		/* munmap(base, len) */
	mov	hdr_base(%rip), %rdi
	mov	hdr_len(%rip), %rsi
	jmp	*hdr_gadget(%rip)

	.org	0x180
/*
 * evict_cleanup: the first return of a frame kept in a scratch slot (remap moved it there
 * because the fold was about to drop the dead stack that held it).  The slot reads
 *   [rsp] = destination on the thread's stack, [rsp+8] = length, [rsp+56...] = the frame,
 *   built for that destination.
 * Copy it there (rep movsb needs no stack), unmap scratch, and go down the ordinary chain
 * from the copy: rsp = destination + 8, so the gadget's `ret` pops the restorer.
 */
evict_cleanup:
	mov	0(%rsp), %r8
	mov	8(%rsp), %rcx
	lea	56(%rsp), %rsi
	mov	%r8, %rdi
	cld
	rep movsb
	mov	$11, %eax
	mov	hdr_base(%rip), %rdi
	mov	hdr_len(%rip), %rsi
	lea	8(%r8), %rsp
	jmp	*hdr_gadget(%rip)

	.org	0x1c0
/* The chain's own pieces, for targets whose code has no `syscall; ret` or no rt_sigreturn
 * restorer (static programs that never install a handler): used while scratch is mapped. */
scratch_syscall_ret:
	syscall
	ret
	.org	0x1c8
scratch_restorer:
	mov	$15, %eax
	syscall

	.org	0x200
hdr_base:	.quad 0
hdr_len:	.quad 0
hdr_gadget:	.quad 0

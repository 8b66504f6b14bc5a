/*
 * batch_stub.S -- the position-independent syscall walker remap copies into a scratch page
 * of the target (remap/stub.py assembles it with `as` + `objcopy -O binary`).
 *
 * Contract (set by the tracer through PTRACE_SETREGS, nothing else is read):
 *   r12 = address of a table of 64-byte entries {nr, a1..a6, result}
 *   r13 = number of entries
 * For each entry it loads rax and the six argument registers, executes `syscall`, stores rax
 * into the entry's result slot, and stops at the first error (-4095..-1) so a failed step never
 * runs the steps that depended on it.  It ends with one int3, which the tracer catches as a
 * SIGTRAP signal-delivery stop and never delivers.  r12 then points at the last entry run.
 * No stack, no call/ret (CET shadow stacks stay untouched), no libc, no absolute addresses.
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
2:	int3

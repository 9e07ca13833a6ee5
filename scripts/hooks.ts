/**
 * Kept at its old path on purpose: environments deployed before the operations code moved to
 * ops/ hold `../../../dist/scripts/hooks.js` in their Terraform state, and a stack directory
 * synthesized then (cdktf.out/stacks/<stack>/cdk.tf.json) runs it from its provisioners. A plain
 * `terraform destroy` there must still find it. The hooks are ops/hooks.ts; this runs them.
 */
import '../ops/hooks';

"""Normal KD (Hinton et al., 2015): a big teacher's softened outputs guide a small student."""

from kdray.strategies.base import Strategy, hinton_kd_loss, register


@register
class NormalKD(Strategy):
    name = "normal"

    def loss(self, student_logits, targets, teacher_logits=None):
        if teacher_logits is None:
            raise ValueError(f"{self.name} KD needs the teacher's logits")
        return hinton_kd_loss(
            student_logits, targets, teacher_logits, self.temperature, self.alpha, self.kl_reduction
        )

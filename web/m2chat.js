// Shows what the VLM wrote (answer and caption, or the story) on M²Chat nodes after a run.
import { app } from "../../scripts/app.js";

const NODES_WITH_TEXT = new Set(["M2ChatEncode", "M2ChatStory"]);
const WIDGET_NAME = "vlm_text";

app.registerExtension({
  name: "m2chat.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_TEXT.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).filter((part) => part).join("\n\n");
      let widget = this.widgets?.find((w) => w.name === WIDGET_NAME);
      if (!widget) {
        widget = app.widgets.STRING(this, WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.serialize = false; // display only: never saved into workflows
      }
      widget.value = text;
      this.setDirtyCanvas(true, true);
    };
  },
});
